//! Networks: the records (`<data-root>/networks/<id>.json`, with each
//! network's subnet, gateway, bridge and allocated addresses) and the
//! bridge driver behind them ([`crate::network`]): the default `bridge`
//! network (unless `--bridge none`) and user-defined bridge networks get a
//! Linux bridge, a subnet, iptables rules and (user-defined only) an
//! embedded DNS responder; containers get veth interfaces, addresses and
//! published ports at start, released at exit. Also the sharing modes
//! dockerd has: `container:<name|id>` network mode (the target's netns,
//! hosts, resolv.conf and hostname), legacy `--link`s on the default
//! bridge (hosts entries and `ALIAS_*` variables), links on user-defined
//! networks (aliases the embedded DNS resolves for the linking container
//! only) and per-container `--dns` servers behind the embedded DNS.
//! Drivers other than `bridge`, IPv6, IPAM options/ranges and driver
//! options answer 501.

use std::collections::{BTreeMap, HashMap};
use std::fs;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use tokio::task::JoinHandle;
use tracing::{info, warn};

use crate::containers::{Endpoint, Record};
use crate::error::{EngineError, Result};
use crate::events::{parse_filters, EventBus};
use crate::network::ipam::{self, Subnet};
use crate::network::iptables::Chains;
use crate::network::portmap::{self, Mapping};
use crate::network::{dns, link, NetConfig};
use crate::util;

/// Names dockerd predefines (refused for user-defined networks).
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
    /// The default `bridge` network (not user-defined).
    #[serde(default)]
    pub predefined: bool,
    /// `a.b.c.0/len`.
    #[serde(default)]
    pub subnet: String,
    #[serde(default)]
    pub gateway: String,
    /// The Linux bridge's name.
    #[serde(default)]
    pub bridge: String,
    /// Subnet/gateway came from the user's IPAM config.
    #[serde(default)]
    pub ipam_config: bool,
    /// Allocated container addresses: address → container ID.
    #[serde(default)]
    pub allocated: BTreeMap<String, String>,
}

impl Network {
    fn subnet(&self) -> Option<Subnet> {
        self.subnet.parse().ok()
    }
    fn gateway(&self) -> Option<Ipv4Addr> {
        self.gateway.parse().ok()
    }
}

/// DNS names per network: network ID → container ID → (names, address).
type NameTable = HashMap<String, HashMap<String, (Vec<String>, Ipv4Addr)>>;

/// What the embedded DNS needs to know about one running container.
#[derive(Debug, Clone, Default)]
struct CtrDns {
    /// `HostConfig.Dns`: where its other questions are forwarded (empty:
    /// the host's nameservers).
    servers: Vec<IpAddr>,
    /// Its links on user-defined networks: network ID → alias → name.
    aliases: HashMap<String, HashMap<String, String>>,
}

/// The network store and bridge driver.
pub struct Networks {
    dir: PathBuf,
    map: Mutex<HashMap<String, Network>>,
    events: Arc<EventBus>,
    pub cfg: NetConfig,
    host: link::Host,
    chains: Option<Chains>,
    /// The chains are set up lazily, with the first network brought up (a
    /// daemon without networks touches no iptables rule).
    chains_ready: Mutex<bool>,
    mtu: u32,
    /// Serializes subnet choice (create) with record insertion.
    create_lock: tokio::sync::Mutex<()>,
    /// Userland proxies by container ID.
    proxies: Mutex<HashMap<String, Vec<JoinHandle<()>>>>,
    /// DNS responders by network ID.
    dns: Mutex<HashMap<String, Vec<JoinHandle<()>>>>,
    names: Arc<Mutex<NameTable>>,
    /// Per running container: `--dns` servers and link aliases (container ID
    /// → settings). Lock order: `names` before this.
    ctr_dns: Arc<Mutex<HashMap<String, CtrDns>>>,
    /// Legacy-link /etc/hosts lines of running containers (container ID →
    /// (names, address)), set at start.
    link_hosts: Mutex<HashMap<String, Vec<(String, String)>>>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Networks {
    /// Loads the records under `<data-root>/networks`, sets up orcad's
    /// iptables chains, the default bridge (unless `--bridge none`) and the
    /// bridges, rules and DNS responders of every network.
    pub async fn new(
        data_root: &std::path::Path,
        cfg: NetConfig,
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
                    warn!(path = %p.display(), "skipping unreadable network record: {e}")
                }
            }
        }
        let host = link::Host::connect()?;
        let chains = if cfg.iptables {
            crate::network::iptables::available().map_err(|e| {
                anyhow::anyhow!(
                    "iptables does not work here ({e}); start orcad with --iptables=false"
                )
            })?;
            Some(Chains::new(&cfg.chain))
        } else {
            None
        };
        let mtu = host.default_mtu().await;
        let nets = Arc::new(Networks {
            dir,
            map: Mutex::new(map),
            events,
            cfg,
            host,
            chains,
            chains_ready: Mutex::new(false),
            mtu,
            create_lock: tokio::sync::Mutex::new(()),
            proxies: Mutex::new(HashMap::new()),
            dns: Mutex::new(HashMap::new()),
            names: Arc::new(Mutex::new(HashMap::new())),
            ctr_dns: Arc::new(Mutex::new(HashMap::new())),
            link_hosts: Mutex::new(HashMap::new()),
        });
        nets.setup_default_bridge().await?;
        for n in nets.all() {
            if let Err(e) = nets.bring_up(&n).await {
                warn!(network = %n.name, "cannot set up network: {e}");
            }
        }
        info!(bridge = %nets.cfg.bridge, mtu, iptables = nets.chains.is_some(), "networking ready");
        Ok(nets)
    }

    fn save(&self, n: &Network) -> Result<()> {
        let data = serde_json::to_vec_pretty(n).map_err(EngineError::internal)?;
        util::write_atomic(&self.dir.join(format!("{}.json", n.id)), &data)?;
        Ok(())
    }

    /// The default `bridge` network record: created (or its subnet
    /// changed to `--bip`) unless `--bridge none`, which removes it.
    async fn setup_default_bridge(&self) -> anyhow::Result<()> {
        let existing = self.all().into_iter().find(|n| n.predefined);
        if self.cfg.bridge == "none" {
            if let Some(n) = existing {
                lock(&self.map).remove(&n.id);
                let _ = fs::remove_file(self.dir.join(format!("{}.json", n.id)));
            }
            return Ok(());
        }
        let (gw, sn) = match &self.cfg.bip {
            Some(b) => ipam::parse_bip(b).map_err(|e| anyhow::anyhow!(e))?,
            None => match existing
                .as_ref()
                .and_then(|n| Some((n.gateway()?, n.subnet()?)))
            {
                Some(x) => x,
                None => {
                    let sn = self.pick_subnet().await?;
                    (sn.first_host(), sn)
                }
            },
        };
        let mut n = existing.unwrap_or_else(|| Network {
            id: util::random_hex(32),
            name: "bridge".into(),
            created: util::now(),
            driver: "bridge".into(),
            internal: false,
            attachable: false,
            labels: BTreeMap::new(),
            predefined: true,
            subnet: String::new(),
            gateway: String::new(),
            bridge: String::new(),
            ipam_config: false,
            allocated: BTreeMap::new(),
        });
        if n.subnet != sn.to_string() || n.gateway != gw.to_string() || n.bridge != self.cfg.bridge
        {
            if !n.bridge.is_empty() && n.bridge != self.cfg.bridge {
                let _ = self.host.delete(&n.bridge).await;
            }
            n.subnet = sn.to_string();
            n.gateway = gw.to_string();
            n.bridge = self.cfg.bridge.clone();
            n.allocated
                .retain(|ip, _| ip.parse().is_ok_and(|ip| sn.contains(ip)));
        }
        self.save(&n)?;
        lock(&self.map).insert(n.id.clone(), n);
        Ok(())
    }

    /// The first pool subnet not used on the host nor by a network.
    async fn pick_subnet(&self) -> Result<Subnet> {
        let mut used = self.host.used_subnets().await?;
        used.extend(lock(&self.map).values().filter_map(|n| n.subnet()));
        ipam::candidates(&self.cfg.pools)
            .into_iter()
            .find(|c| !used.iter().any(|u| u.overlaps(c)))
            .ok_or_else(|| {
                EngineError::Forbidden(
                    "could not find an available, non-overlapping IPv4 address pool among the defaults to assign to the network".into(),
                )
            })
    }

    /// Bridge, iptables rules and DNS responder of `n` (idempotent).
    async fn bring_up(&self, n: &Network) -> Result<()> {
        let (Some(sn), Some(gw)) = (n.subnet(), n.gateway()) else {
            return Err(EngineError::internal(format!(
                "network {} has no subnet (a record from an older orcad: remove and create it again)",
                n.name
            )));
        };
        self.ensure_chains()?;
        let created = self.host.ensure_bridge(&n.bridge, gw, &sn).await?;
        let res = async {
            if let Some(c) = &self.chains {
                for r in c.network_rules(&n.bridge, &n.subnet, n.internal) {
                    r.add()?;
                }
            }
            if !n.predefined {
                self.start_dns(n, gw).await;
            }
            Ok::<(), EngineError>(())
        }
        .await;
        if let Err(e) = res {
            self.bring_down(n).await;
            if !created {
                // keep what existed before
            }
            return Err(e);
        }
        Ok(())
    }

    /// Removes the DNS responder, rules and bridge of `n`.
    async fn bring_down(&self, n: &Network) {
        if let Some(hs) = lock(&self.dns).remove(&n.id) {
            hs.iter().for_each(|h| h.abort());
        }
        lock(&self.names).remove(&n.id);
        if let Some(c) = &self.chains {
            for r in c.network_rules(&n.bridge, &n.subnet, n.internal) {
                r.del();
            }
        }
        if let Err(e) = self.host.delete(&n.bridge).await {
            warn!(bridge = %n.bridge, "cannot delete bridge: {e}");
        }
    }

    /// Creates (flushing stale rules) and hooks in orcad's chains once.
    fn ensure_chains(&self) -> Result<()> {
        let Some(c) = &self.chains else { return Ok(()) };
        let mut ready = lock(&self.chains_ready);
        if !*ready {
            c.setup()?;
            *ready = true;
        }
        Ok(())
    }

    async fn start_dns(&self, n: &Network, gw: Ipv4Addr) {
        if lock(&self.dns).contains_key(&n.id) {
            return;
        }
        let names = self.names.clone();
        let ctr_dns = self.ctr_dns.clone();
        let id = n.id.clone();
        let resolver: dns::Resolver = Arc::new(move |q: &str, from: IpAddr| {
            let t = lock(&names);
            let Some(members) = t.get(&id) else {
                return dns::Lookup::Forward(Vec::new());
            };
            // The asking container (by its address on this network): its
            // link aliases and `--dns` servers.
            let asker = members
                .iter()
                .find(|(_, (_, ip))| IpAddr::V4(*ip) == from)
                .and_then(|(cid, _)| lock(&ctr_dns).get(cid).cloned())
                .unwrap_or_default();
            let name = asker
                .aliases
                .get(&id)
                .and_then(|a| a.get(q))
                .map(String::as_str)
                .unwrap_or(q);
            let ips: Vec<Ipv4Addr> = members
                .values()
                .filter(|(ns, _)| ns.iter().any(|x| x == name))
                .map(|(_, ip)| *ip)
                .collect();
            if ips.is_empty() {
                dns::Lookup::Forward(asker.servers)
            } else {
                dns::Lookup::Local(ips)
            }
        });
        match dns::serve(gw, resolver).await {
            Ok(hs) => {
                lock(&self.dns).insert(n.id.clone(), hs);
            }
            Err(e) => warn!(network = %n.name, %gw, "cannot start the DNS responder: {e}"),
        }
    }

    /// A clean daemon shutdown (not live-restore): DNS responders and
    /// proxies stop, bridges and iptables chains are removed (they come back
    /// at the next start).
    pub async fn shutdown(&self, live_restore: bool) {
        if live_restore {
            return;
        }
        for (_, hs) in lock(&self.proxies).drain() {
            hs.iter().for_each(|h| h.abort());
        }
        for n in self.all() {
            self.bring_down(&n).await;
        }
        if let Some(c) = &self.chains {
            let mut ready = lock(&self.chains_ready);
            if *ready {
                c.teardown();
                *ready = false;
            }
        }
        info!("networking torn down");
    }

    /// By full ID, exact name, or unique ID prefix (dockerd's order).
    pub fn lookup(&self, key: &str) -> Result<Network> {
        let map = lock(&self.map);
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
    pub async fn create(&self, body: &Value) -> Result<Value> {
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
                "{what} is not implemented in orcad yet"
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
        if nonempty(&body["IPAM"]["Options"]) {
            return ni("IPAM options");
        }
        match body["IPAM"]["Driver"].as_str().unwrap_or("") {
            "" | "default" => {}
            d => return ni(&format!("IPAM driver {d:?}")),
        }
        // IPAM Config: one IPv4 entry with Subnet (and Gateway).
        let mut wanted: Option<(Subnet, Option<Ipv4Addr>)> = None;
        match &body["IPAM"]["Config"] {
            Value::Null => {}
            Value::Array(a) if a.is_empty() => {}
            Value::Array(a) if a.len() == 1 => {
                let c = &a[0];
                for k in ["IPRange", "AuxiliaryAddresses", "AuxAddress"] {
                    if nonempty(&c[k]) {
                        return ni(&format!("IPAM {k}"));
                    }
                }
                let s = c["Subnet"].as_str().unwrap_or("");
                if s.is_empty() {
                    if nonempty(&c["Gateway"]) {
                        return Err(EngineError::BadRequest(
                            "a gateway needs a subnet in the IPAM config".into(),
                        ));
                    }
                } else {
                    let sn: Subnet = s.parse().map_err(|e: String| {
                        if s.contains(':') {
                            EngineError::NotImplemented(
                                "IPv6 subnets are not implemented in orcad yet".into(),
                            )
                        } else {
                            EngineError::BadRequest(e)
                        }
                    })?;
                    if sn.len > 30 || sn.len < 8 {
                        return Err(EngineError::BadRequest(format!(
                            "subnet {s}: the prefix length must be between 8 and 30"
                        )));
                    }
                    let gw = match c["Gateway"].as_str().unwrap_or("") {
                        "" => None,
                        g => {
                            let ip: Ipv4Addr = g.parse().map_err(|_| {
                                EngineError::BadRequest(format!("invalid gateway address {g:?}"))
                            })?;
                            if !sn.contains(ip) || ip == sn.addr {
                                return Err(EngineError::BadRequest(format!(
                                    "no matching subnet for gateway {g}"
                                )));
                            }
                            Some(ip)
                        }
                    };
                    wanted = Some((sn, gw));
                }
            }
            Value::Array(_) => return ni("several IPAM configs per network"),
            _ => return Err(EngineError::BadRequest("IPAM.Config must be a list".into())),
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
        let _guard = self.create_lock.lock().await;
        if lock(&self.map).values().any(|n| n.name == name) {
            return Err(EngineError::Conflict(format!(
                "network with name {name} already exists"
            )));
        }
        let (sn, gw, ipam_config) = match wanted {
            Some((sn, gw)) => {
                let others = lock(&self.map)
                    .values()
                    .filter_map(|n| n.subnet())
                    .collect::<Vec<_>>();
                if others.iter().any(|o| o.overlaps(&sn)) {
                    return Err(EngineError::Forbidden(format!(
                        "Pool overlaps with other one on this address space ({sn})"
                    )));
                }
                (sn, gw.unwrap_or_else(|| sn.first_host()), true)
            }
            None => {
                let sn = self.pick_subnet().await?;
                (sn, sn.first_host(), false)
            }
        };
        let id = util::random_hex(32);
        let net = Network {
            bridge: format!("br-{}", &id[..12]),
            id,
            name: name.clone(),
            created: util::now(),
            driver: "bridge".into(),
            internal: body["Internal"].as_bool().unwrap_or(false),
            attachable: body["Attachable"].as_bool().unwrap_or(false),
            labels,
            predefined: false,
            subnet: sn.to_string(),
            gateway: gw.to_string(),
            ipam_config,
            allocated: BTreeMap::new(),
        };
        self.bring_up(&net).await?;
        if let Err(e) = self.save(&net) {
            self.bring_down(&net).await;
            return Err(e);
        }
        lock(&self.map).insert(net.id.clone(), net.clone());
        info!(id = %net.id, name = %net.name, subnet = %net.subnet, bridge = %net.bridge, "created network");
        self.events.network("create", &net.id, &net.name, &[]);
        Ok(json!({"Id": net.id, "Warning": ""}))
    }

    /// DELETE /networks/{id}; `in_use` names a running container attached.
    pub async fn remove(&self, key: &str, in_use: impl Fn(&str) -> Option<String>) -> Result<()> {
        let net = self.lookup(key)?;
        if net.predefined || PREDEFINED.contains(&net.name.as_str()) {
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
        lock(&self.map).remove(&net.id);
        match fs::remove_file(self.dir.join(format!("{}.json", net.id))) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(e.into()),
        }
        self.bring_down(&net).await;
        info!(id = %net.id, name = %net.name, "removed network");
        self.events.network("destroy", &net.id, &net.name, &[]);
        Ok(())
    }

    /// All records, by name.
    pub fn all(&self) -> Vec<Network> {
        let mut v: Vec<Network> = lock(&self.map).values().cloned().collect();
        v.sort_by(|a, b| a.name.cmp(&b.name));
        v
    }

    /// What `host-gateway` in `--add-host` means: `--host-gateway-ip`, else
    /// the default bridge's gateway (dockerd's error when there is neither).
    fn host_gateway(&self) -> Result<String> {
        if let Some(ip) = self.cfg.host_gateway_ip {
            return Ok(ip.to_string());
        }
        self.default_bridge()
            .map(|n| n.gateway)
            .filter(|g| !g.is_empty())
            .ok_or_else(|| {
                EngineError::Internal("unable to derive the IP value for host-gateway".into())
            })
    }

    /// The default bridge network, when enabled.
    pub fn default_bridge(&self) -> Option<Network> {
        lock(&self.map).values().find(|n| n.predefined).cloned()
    }

    /// Docker's network JSON; `containers` is the `Containers` map.
    pub fn to_json(n: &Network, containers: Value) -> Value {
        let mut opts = json!({});
        if n.predefined {
            opts = json!({"com.docker.network.bridge.default_bridge": "true",
                          "com.docker.network.bridge.name": n.bridge});
        }
        json!({
            "Name": n.name,
            "Id": n.id,
            "Created": n.created,
            "Scope": "local",
            "Driver": n.driver,
            "EnableIPv6": false,
            "IPAM": {"Driver": "default", "Options": null,
                     "Config": if n.subnet.is_empty() { json!([]) } else { json!([{"Subnet": n.subnet, "Gateway": n.gateway}]) }},
            "Internal": n.internal,
            "Attachable": n.attachable,
            "Ingress": false,
            "ConfigFrom": {"Network": ""},
            "ConfigOnly": false,
            "Containers": containers,
            "Options": opts,
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
                    && ok("type", &|v| {
                        v == if n.predefined { "builtin" } else { "custom" }
                    })
                    && ok("scope", &|v| v == "local")
                    && ok("dangling", &|v| {
                        (v == "true" || v == "1") != (attached(&n.id) || n.predefined)
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

    // ---- container endpoints ----

    /// Allocates an address on each network `rec` joins (before the task
    /// exists). On failure nothing stays allocated.
    pub fn allocate(&self, rec: &mut Record) -> Result<()> {
        let id = rec.id.clone();
        let mut done: Vec<(String, String)> = Vec::new();
        let mut res = Ok(());
        for (name, ep) in rec.networks.iter_mut() {
            if let Err(e) = self.allocate_one(&id, name, ep) {
                res = Err(e);
                break;
            }
            done.push((ep.network_id.clone(), ep.ip.clone()));
        }
        if res.is_err() {
            for (nid, ip) in done {
                self.free_ip(&nid, &ip, &id);
            }
            for ep in rec.networks.values_mut() {
                clear_endpoint(ep);
            }
        }
        res
    }

    fn allocate_one(&self, cid: &str, name: &str, ep: &mut Endpoint) -> Result<()> {
        let mut map = lock(&self.map);
        let n = map
            .get_mut(&ep.network_id)
            .ok_or_else(|| EngineError::NotFound(format!("network {name} not found")))?;
        let (Some(sn), Some(gw)) = (n.subnet(), n.gateway()) else {
            return Err(EngineError::internal(format!(
                "network {name} has no subnet"
            )));
        };
        // An address still recorded for this container (orcad restart).
        let ip = match n.allocated.iter().find(|(_, c)| *c == cid) {
            Some((ip, _)) => ip.parse().map_err(EngineError::internal)?,
            None => sn.allocate(gw, &n.allocated).ok_or_else(|| {
                EngineError::Internal(format!(
                    "no available IPv4 address on network {name} ({sn})"
                ))
            })?,
        };
        n.allocated.insert(ip.to_string(), cid.to_string());
        let snapshot = n.clone();
        drop(map);
        if let Err(e) = self.save(&snapshot) {
            self.free_ip(&snapshot.id, &ip.to_string(), cid);
            return Err(e);
        }
        ep.ip = ip.to_string();
        ep.prefix_len = sn.len;
        ep.gateway = gw.to_string();
        ep.mac = ipam::mac_string(&ipam::mac_for(ip));
        ep.endpoint_id = util::random_hex(32);
        Ok(())
    }

    fn free_ip(&self, nid: &str, ip: &str, cid: &str) {
        let snapshot = {
            let mut map = lock(&self.map);
            let Some(n) = map.get_mut(nid) else { return };
            if n.allocated.get(ip).map(String::as_str) != Some(cid) {
                return;
            }
            n.allocated.remove(ip);
            n.clone()
        };
        if let Err(e) = self.save(&snapshot) {
            warn!(network = %snapshot.name, "cannot save the network record: {e}");
        }
    }

    /// /etc/hosts and /etc/resolv.conf of `rec` for its network mode,
    /// addresses and `ExtraHosts`/`Dns`/`DnsSearch`/`DnsOptions` (written in
    /// place: they are bind-mounted). Also used at create, before any address.
    pub fn write_files(&self, rec: &Record) -> Result<()> {
        let hc = &rec.host_config;
        let mode = hc["NetworkMode"].as_str().unwrap_or("");
        if container_target(mode).is_some() {
            // The target's files are used (and written by it).
            return Ok(());
        }
        let host_resolv = fs::read_to_string("/etc/resolv.conf").unwrap_or_default();
        let extra = extra_hosts(hc, Some(&|| self.host_gateway()))?;
        let mut hosts = if mode == "host" {
            String::from_utf8_lossy(&fs::read("/etc/hosts").unwrap_or_default()).into_owned()
        } else {
            let hn = &rec.config.hostname;
            let own = rec
                .networks
                .values()
                .find(|e| !e.ip.is_empty())
                .map(|e| e.ip.clone())
                .unwrap_or_else(|| "127.0.0.1".into());
            format!(
                "127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n\
                 fe00::0\tip6-localnet\nff00::0\tip6-mcastprefix\nff02::1\tip6-allnodes\n\
                 ff02::2\tip6-allrouters\n{own}\t{hn}\n"
            )
        };
        if !hosts.is_empty() && !hosts.ends_with('\n') {
            hosts.push('\n');
        }
        if let Some(links) = lock(&self.link_hosts).get(&rec.id) {
            for (names, ip) in links {
                hosts.push_str(&format!("{ip}\t{names}\n"));
            }
        }
        for (name, ip) in &extra {
            hosts.push_str(&format!("{ip}\t{name}\n"));
        }
        // On a user-defined network the embedded DNS (its gateway) answers;
        // otherwise the host's non-loopback nameservers (loopback ones
        // would point into the container itself), unless `Dns` names others.
        let dns_gw = if mode == "host" {
            None
        } else {
            let map = lock(&self.map);
            rec.networks
                .values()
                .filter_map(|e| map.get(&e.network_id))
                .find(|n| !n.predefined && lock(&self.dns).contains_key(&n.id))
                .map(|n| n.gateway.clone())
        };
        let dns = util::json_strings(&hc["Dns"]);
        let search = util::json_strings(&hc["DnsSearch"]);
        let options = util::json_strings(&hc["DnsOptions"]);
        for a in &dns {
            if a.parse::<std::net::IpAddr>().is_err() {
                return Err(EngineError::BadRequest(format!("{a} is not an ip address")));
            }
        }
        let mut resolv = String::new();
        if let Some(gw) = &dns_gw {
            resolv.push_str(&format!("nameserver {gw}\n"));
        }
        // Behind the embedded DNS (as dockerd's 127.0.0.11), `Dns` servers
        // are where it forwards this container's other questions.
        if dns_gw.is_none() {
            for a in &dns {
                resolv.push_str(&format!("nameserver {a}\n"));
            }
        }
        for l in host_resolv.lines() {
            let mut w = l.split_whitespace();
            let keep = match w.next() {
                Some("nameserver") => {
                    mode == "host"
                        || (dns_gw.is_none()
                            && dns.is_empty()
                            && !w
                                .next()
                                .is_some_and(|a| a.starts_with("127.") || a == "::1"))
                }
                Some("search" | "domain") => search.is_empty(),
                Some("options") => options.is_empty(),
                _ => true,
            };
            if keep {
                resolv.push_str(l);
                resolv.push('\n');
            }
        }
        if !search.is_empty() {
            resolv.push_str(&format!("search {}\n", search.join(" ")));
        }
        if !options.is_empty() {
            resolv.push_str(&format!("options {}\n", options.join(" ")));
        }
        fs::write(&rec.hosts_path, hosts)?;
        fs::write(&rec.resolv_conf_path, resolv)?;
        Ok(())
    }

    /// After `Tasks.Create`: a veth per network into the task's namespace
    /// (`eth0`, `eth1`…; the default route via the first), then the
    /// published ports. On failure everything done here is undone.
    pub async fn attach_task(&self, rec: &mut Record, pid: u32) -> Result<()> {
        let cid = rec.id.clone();
        let names = dns_names(rec);
        self.set_ctr_dns(rec);
        let mut done: Vec<String> = Vec::new();
        let mut res: Result<()> = Ok(());
        let mut first = true;
        for (i, (name, ep)) in rec.networks.iter_mut().enumerate() {
            match self
                .attach_one(name, ep, pid, &format!("eth{i}"), first)
                .await
            {
                Ok(()) => {
                    done.push(ep.veth.clone());
                    lock(&self.names)
                        .entry(ep.network_id.clone())
                        .or_default()
                        .insert(
                            cid.clone(),
                            (
                                names.clone(),
                                ep.ip.parse().unwrap_or(Ipv4Addr::UNSPECIFIED),
                            ),
                        );
                    first = false;
                }
                Err(e) => {
                    res = Err(e);
                    break;
                }
            }
        }
        if res.is_ok() {
            match self.publish(rec).await {
                Ok(maps) => rec.ports = maps,
                Err(e) => res = Err(e),
            }
        }
        if let Err(e) = res {
            for v in done {
                let _ = self.host.delete(&v).await;
            }
            for t in lock(&self.names).values_mut() {
                t.remove(&cid);
            }
            lock(&self.ctr_dns).remove(&cid);
            return Err(e);
        }
        Ok(())
    }

    /// The embedded DNS's view of `rec`: its `Dns` servers and its links
    /// on user-defined networks.
    fn set_ctr_dns(&self, rec: &Record) {
        let servers = util::json_strings(&rec.host_config["Dns"])
            .iter()
            .filter_map(|a| a.parse::<IpAddr>().ok())
            .collect();
        let mut aliases: HashMap<String, HashMap<String, String>> = HashMap::new();
        for ep in rec.networks.values() {
            for l in &ep.links {
                if let Ok((name, alias)) = parse_link(l) {
                    aliases
                        .entry(ep.network_id.clone())
                        .or_default()
                        .insert(alias.to_ascii_lowercase(), name.to_ascii_lowercase());
                }
            }
        }
        lock(&self.ctr_dns).insert(rec.id.clone(), CtrDns { servers, aliases });
    }

    /// The legacy-link /etc/hosts lines of `cid` for its next
    /// [`Self::write_files`] (empty: none).
    pub fn set_link_hosts(&self, cid: &str, lines: Vec<(String, String)>) {
        if lines.is_empty() {
            lock(&self.link_hosts).remove(cid);
        } else {
            lock(&self.link_hosts).insert(cid.to_string(), lines);
        }
    }

    async fn attach_one(
        &self,
        name: &str,
        ep: &mut Endpoint,
        pid: u32,
        ifname: &str,
        default_route: bool,
    ) -> Result<()> {
        let net = self.lookup(&ep.network_id)?;
        let ip: Ipv4Addr = ep.ip.parse().map_err(|_| {
            EngineError::internal(format!("no address allocated on network {name}"))
        })?;
        let gw: Ipv4Addr = ep.gateway.parse().map_err(EngineError::internal)?;
        let ns_path = format!("/proc/{pid}/ns/net");
        let open = || {
            fs::File::open(&ns_path)
                .map_err(|e| EngineError::internal(format!("open {ns_path}: {e}")))
        };
        let suffix = util::random_hex(4)[..7].to_string();
        let host_name = format!("veth{suffix}");
        let tmp = format!("orc{suffix}");
        self.host
            .veth_into(&host_name, &tmp, &net.bridge, self.mtu, &open()?)
            .await?;
        let inside = link::Inside {
            tmp_name: tmp,
            ifname: ifname.to_string(),
            mac: ipam::mac_for(ip),
            ip,
            prefix: ep.prefix_len,
            gateway: default_route.then_some(gw),
        };
        if let Err(e) = link::configure_inside(open()?, inside).await {
            let _ = self.host.delete(&host_name).await;
            return Err(e.into());
        }
        ep.veth = host_name;
        ep.ifname = ifname.to_string();
        Ok(())
    }

    /// Binds and forwards the ports `rec` publishes (to its first
    /// address); on failure the ones already done are undone.
    async fn publish(&self, rec: &Record) -> Result<Vec<Mapping>> {
        let wanted = portmap::wanted(&rec.host_config, &exposed(rec))?;
        if wanted.is_empty() {
            return Ok(Vec::new());
        }
        let Some((_, ep)) = rec.networks.iter().find(|(_, e)| !e.ip.is_empty()) else {
            warn!(id = %rec.id, "published ports ignored: the container has no bridge network");
            return Ok(Vec::new());
        };
        let br = self.lookup(&ep.network_id)?.bridge;
        let mut maps = Vec::new();
        for mut w in wanted {
            if w.host_ip.is_unspecified() {
                w.host_ip = self.cfg.ip;
            }
            let m = Mapping {
                proto: w.proto.clone(),
                container_port: w.container_port,
                host_ip: w.host_ip.to_string(),
                host_port: 0,
                container_ip: ep.ip.clone(),
                bridge: br.clone(),
            };
            let r = async {
                let (bound, port) = portmap::bind(&w, self.cfg.userland_proxy).await?;
                let m = Mapping {
                    host_port: port,
                    ..m
                };
                self.forward(&rec.id, &m, Some(bound))?;
                Ok::<Mapping, EngineError>(m)
            }
            .await;
            match r {
                Ok(m) => maps.push(m),
                Err(e) => {
                    self.unpublish(&rec.id, &maps);
                    return Err(e);
                }
            }
        }
        Ok(maps)
    }

    /// The DNAT rule and proxy of one mapping (`bound`: its socket, or
    /// None to bind it again after an orcad restart).
    fn forward(&self, cid: &str, m: &Mapping, bound: Option<portmap::Bound>) -> Result<()> {
        let dest = SocketAddr::new(
            m.container_ip.parse().map_err(EngineError::internal)?,
            m.container_port,
        );
        if let Some(c) = &self.chains {
            c.dnat_rule(
                &m.bridge,
                &m.host_ip,
                m.host_port,
                &m.proto,
                &dest.to_string(),
            )
            .add()?;
        }
        if let Some(b) = bound {
            if let Some(h) = portmap::spawn_proxy(b, dest) {
                lock(&self.proxies)
                    .entry(cid.to_string())
                    .or_default()
                    .push(h);
            }
        }
        Ok(())
    }

    fn unpublish(&self, cid: &str, maps: &[Mapping]) {
        if let Some(hs) = lock(&self.proxies).remove(cid) {
            hs.iter().for_each(|h| h.abort());
        }
        if let Some(c) = &self.chains {
            for m in maps {
                let dest = format!("{}:{}", m.container_ip, m.container_port);
                c.dnat_rule(&m.bridge, &m.host_ip, m.host_port, &m.proto, &dest)
                    .del();
            }
        }
    }

    /// At exit, rm, or a failed start: proxies and DNAT rules go, host
    /// veths are deleted (if the namespace did not take them along),
    /// addresses are released.
    pub async fn release(&self, rec: &mut Record) {
        let cid = rec.id.clone();
        self.unpublish(&cid, &rec.ports);
        rec.ports.clear();
        for t in lock(&self.names).values_mut() {
            t.remove(&cid);
        }
        lock(&self.ctr_dns).remove(&cid);
        lock(&self.link_hosts).remove(&cid);
        for ep in rec.networks.values_mut() {
            if !ep.veth.is_empty() {
                if let Err(e) = self.host.delete(&ep.veth).await {
                    warn!(id = %cid, veth = %ep.veth, "cannot delete veth: {e}");
                }
            }
            if !ep.ip.is_empty() {
                self.free_ip(&ep.network_id, &ep.ip, &cid);
            }
            clear_endpoint(ep);
        }
    }

    /// After an orcad restart, for a container still running: DNS names,
    /// DNAT rules and proxies come back (addresses stayed recorded).
    pub async fn restore(&self, rec: &Record) {
        let names = dns_names(rec);
        self.set_ctr_dns(rec);
        for ep in rec.networks.values() {
            if let Ok(ip) = ep.ip.parse::<Ipv4Addr>() {
                lock(&self.names)
                    .entry(ep.network_id.clone())
                    .or_default()
                    .insert(rec.id.clone(), (names.clone(), ip));
            }
        }
        for m in &rec.ports {
            let w = portmap::Wanted {
                proto: m.proto.clone(),
                container_port: m.container_port,
                host_ip: m.host_ip.parse().unwrap_or(Ipv4Addr::UNSPECIFIED),
                host_ports: (m.host_port, m.host_port),
            };
            let bound = match portmap::bind(&w, self.cfg.userland_proxy).await {
                Ok((b, _)) => Some(b),
                Err(e) => {
                    warn!(id = %rec.id, "cannot re-bind published port: {e}");
                    None
                }
            };
            if let Err(e) = self.forward(&rec.id, m, bound) {
                warn!(id = %rec.id, "cannot restore published port: {e}");
            }
        }
    }

    /// Connects a running container (task `pid`) to one more network.
    pub async fn connect_running(&self, rec: &mut Record, name: &str, pid: u32) -> Result<()> {
        let cid = rec.id.clone();
        let names = dns_names(rec);
        let n = rec.networks.len().saturating_sub(1);
        let ifname = (n..64)
            .map(|i| format!("eth{i}"))
            .find(|f| !rec.networks.values().any(|e| &e.ifname == f))
            .unwrap_or_else(|| format!("eth{n}"));
        let ep = rec
            .networks
            .get_mut(name)
            .ok_or_else(|| EngineError::internal("endpoint vanished"))?;
        self.allocate_one(&cid, name, ep)?;
        if let Err(e) = self.attach_one(name, ep, pid, &ifname, false).await {
            self.free_ip(&ep.network_id, &ep.ip, &cid);
            clear_endpoint(ep);
            return Err(e);
        }
        lock(&self.names)
            .entry(ep.network_id.clone())
            .or_default()
            .insert(cid, (names, ep.ip.parse().unwrap_or(Ipv4Addr::UNSPECIFIED)));
        self.set_ctr_dns(rec);
        Ok(())
    }

    /// Disconnects endpoint `ep` of a running container.
    pub async fn disconnect_running(&self, cid: &str, ep: &mut Endpoint) {
        if let Some(t) = lock(&self.names).get_mut(&ep.network_id) {
            t.remove(cid);
        }
        if !ep.veth.is_empty() {
            if let Err(e) = self.host.delete(&ep.veth).await {
                warn!(id = %cid, "cannot delete veth {}: {e}", ep.veth);
            }
        }
        if !ep.ip.is_empty() {
            self.free_ip(&ep.network_id, &ep.ip, cid);
        }
        clear_endpoint(ep);
    }
}

fn clear_endpoint(ep: &mut Endpoint) {
    ep.ip.clear();
    ep.prefix_len = 0;
    ep.gateway.clear();
    ep.mac.clear();
    ep.endpoint_id.clear();
    ep.veth.clear();
    ep.ifname.clear();
}

/// The names a container answers to on its networks: name, aliases,
/// short ID (lowercase).
fn dns_names(rec: &Record) -> Vec<String> {
    let mut v = vec![
        rec.name.trim_start_matches('/').to_ascii_lowercase(),
        rec.id[..12.min(rec.id.len())].to_string(),
    ];
    for ep in rec.networks.values() {
        for a in &ep.aliases {
            let a = a.to_ascii_lowercase();
            if !v.contains(&a) {
                v.push(a);
            }
        }
    }
    v
}

/// The container's ExposedPorts.
pub fn exposed(rec: &Record) -> Value {
    rec.config.exposed_ports.clone().unwrap_or(Value::Null)
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
    for e in engine.containers.entries() {
        let r = e.record();
        if !r.state.running {
            continue;
        }
        for ep in r.networks.values().filter(|ep| ep.network_id == id) {
            m.insert(
                r.id.clone(),
                json!({"Name": r.name.trim_start_matches('/'), "EndpointID": ep.endpoint_id,
                       "MacAddress": ep.mac,
                       "IPv4Address": if ep.ip.is_empty() { String::new() } else { format!("{}/{}", ep.ip, ep.prefix_len) },
                       "IPv6Address": ""}),
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
pub async fn remove(engine: &crate::Engine, key: &str) -> Result<()> {
    engine
        .networks
        .remove(key, |id| {
            attached(engine, id)
                .into_iter()
                .find(|(_, _, running)| *running)
                .map(|(_, name, _)| name)
        })
        .await
}

/// POST /networks/{id}/connect `{"Container", "EndpointConfig"}`.
pub async fn connect(engine: &crate::Engine, key: &str, body: &Value) -> Result<()> {
    let net = engine.networks.lookup(key)?;
    if net.predefined && engine.networks.cfg.bridge == "none" {
        return Err(EngineError::NotFound(format!("network {key} not found")));
    }
    let ckey = body["Container"].as_str().unwrap_or("");
    let entry = engine.containers.lookup(ckey)?;
    let _op = entry.op.lock().await;
    let mut rec = entry.record();
    match rec.host_config["NetworkMode"].as_str().unwrap_or("") {
        "host" | "none" => {
            return Err(EngineError::BadRequest(format!(
                "container cannot be connected to network {} (network mode {})",
                net.name,
                rec.host_config["NetworkMode"].as_str().unwrap_or("")
            )))
        }
        m if m.starts_with("container:") => {
            return Err(EngineError::BadRequest(
                "container sharing network namespace with another container or host cannot be connected to any other network".into(),
            ))
        }
        _ => {}
    }
    if rec.networks.values().any(|e| e.network_id == net.id) {
        return Err(EngineError::Forbidden(format!(
            "endpoint with name {} already exists in network {}",
            rec.name.trim_start_matches('/'),
            net.name
        )));
    }
    let ec = &body["EndpointConfig"];
    let nonempty = |v: &Value| !(v.is_null() || v == "" || v == &json!({}) || v == &json!([]));
    if nonempty(&ec["IPAMConfig"]) || nonempty(&ec["IPAddress"]) {
        return Err(EngineError::NotImplemented(
            "static addresses are not implemented in orcad yet".into(),
        ));
    }
    let aliases: Vec<String> = serde_json::from_value(ec["Aliases"].clone()).unwrap_or_default();
    let links = endpoint_links(&ec["Links"])?;
    if net.predefined && !links.is_empty() {
        return Err(EngineError::BadRequest(
            "links are only supported for user-defined networks".into(),
        ));
    }
    rec.networks.insert(
        net.name.clone(),
        Endpoint {
            network_id: net.id.clone(),
            aliases,
            links,
            ..Default::default()
        },
    );
    let pid = rec.state.pid;
    if rec.state.running && !rec.state.restarting && pid > 0 {
        engine
            .networks
            .connect_running(&mut rec, &net.name, pid)
            .await?;
        let _ = engine.networks.write_files(&rec);
    }
    let nets = rec.networks.clone();
    entry.with_rec(|r| r.networks = nets);
    engine.containers.save(&entry.record())?;
    if rec.state.running {
        engine.events.network(
            "connect",
            &net.id,
            &net.name,
            &[("container", rec.id.clone())],
        );
    }
    Ok(())
}

/// POST /networks/{id}/disconnect `{"Container", "Force"}`.
pub async fn disconnect(engine: &crate::Engine, key: &str, body: &Value) -> Result<()> {
    let net = engine.networks.lookup(key)?;
    let ckey = body["Container"].as_str().unwrap_or("");
    let entry = engine.containers.lookup(ckey)?;
    let _op = entry.op.lock().await;
    let mut rec = entry.record();
    let Some(name) = rec
        .networks
        .iter()
        .find(|(_, e)| e.network_id == net.id)
        .map(|(n, _)| n.clone())
    else {
        return Err(EngineError::Forbidden(format!(
            "container {} is not connected to network {}",
            rec.id, net.name
        )));
    };
    let mut ep = rec.networks.remove(&name).unwrap_or_default();
    if rec.state.running {
        engine.networks.disconnect_running(&rec.id, &mut ep).await;
        let _ = engine.networks.write_files(&rec);
    }
    let nets = rec.networks.clone();
    entry.with_rec(|r| r.networks = nets);
    engine.containers.save(&entry.record())?;
    if rec.state.running {
        engine.events.network(
            "disconnect",
            &net.id,
            &net.name,
            &[("container", rec.id.clone())],
        );
    }
    Ok(())
}

/// Checks `ExtraHosts` and `Dns` at create, before anything is made.
pub fn check_hosts_and_dns(hc: &Value) -> Result<()> {
    extra_hosts(hc, None)?;
    for a in util::json_strings(&hc["Dns"]) {
        if a.parse::<std::net::IpAddr>().is_err() {
            return Err(EngineError::BadRequest(format!("{a} is not an ip address")));
        }
    }
    Ok(())
}

/// `HostConfig.ExtraHosts` (`name:ip`, the docker CLI's `--add-host`; an
/// IPv6 address keeps its colons) as (name, ip) pairs. `host-gateway` is
/// `host_gw()`'s address (`None`: only checking, such entries are skipped).
fn extra_hosts(
    hc: &Value,
    host_gw: Option<&dyn Fn() -> Result<String>>,
) -> Result<Vec<(String, String)>> {
    let mut out = Vec::new();
    for e in util::json_strings(&hc["ExtraHosts"]) {
        let (name, ip) = e
            .split_once(':')
            .or_else(|| e.split_once('='))
            .ok_or_else(|| {
                EngineError::BadRequest(format!("invalid extra host entry {e:?}: expected name:ip"))
            })?;
        let ip = ip.trim_start_matches('[').trim_end_matches(']');
        if ip == "host-gateway" {
            if name.is_empty() {
                return Err(EngineError::BadRequest(format!(
                    "invalid extra host entry {e:?}: expected name:ip"
                )));
            }
            if let Some(gw) = host_gw {
                out.push((name.to_string(), gw()?));
            }
            continue;
        }
        if name.is_empty() || ip.parse::<std::net::IpAddr>().is_err() {
            return Err(EngineError::BadRequest(format!(
                "invalid IP address in add-host: {ip:?}"
            )));
        }
        out.push((name.to_string(), ip.to_string()));
    }
    Ok(out)
}

// ---- sharing modes: container:<x>, links ----

/// The container named by a `container:<name|id>` mode, if that is the mode.
pub fn container_target(mode: &str) -> Option<&str> {
    mode.strip_prefix("container:")
}

/// dockerd's checks of `container:<x>` network mode (and of links with
/// `host` mode) at create, with its messages. `body` is the create body
/// (Config fields at its top level).
pub fn check_network_mode(body: &Value, hc: &Value) -> Result<()> {
    let bad = |m: &str| Err(EngineError::BadRequest(m.to_string()));
    let mode = hc["NetworkMode"].as_str().unwrap_or("");
    let links = util::json_strings(&hc["Links"]);
    for l in &links {
        parse_link(l)?;
    }
    if mode == "host" && !links.is_empty() {
        return bad("conflicting options: host type networking can't be used with links. This would result in undefined behavior");
    }
    if mode != "container" && container_target(mode).is_none() {
        return Ok(());
    }
    if container_target(mode).is_none_or(|t| t.is_empty()) {
        return bad("Invalid network mode: invalid container format container:<name|id>");
    }
    let set = |v: &Value| match v {
        Value::Null => false,
        Value::Array(a) => !a.is_empty(),
        Value::Object(o) => !o.is_empty(),
        Value::String(s) => !s.is_empty(),
        Value::Bool(b) => *b,
        Value::Number(_) => true,
    };
    if set(&body["Hostname"]) {
        return bad("conflicting options: hostname and the network mode");
    }
    if !links.is_empty() {
        return bad("conflicting options: container type network can't be used with links. This would result in undefined behavior");
    }
    if set(&hc["Dns"]) {
        return bad("conflicting options: dns and the network mode");
    }
    if set(&hc["ExtraHosts"]) {
        return bad("conflicting options: custom host-to-IP mapping and the network mode");
    }
    let ep_mac = body["NetworkingConfig"]["EndpointsConfig"]
        .as_object()
        .is_some_and(|eps| eps.values().any(|e| set(&e["MacAddress"])));
    if set(&body["MacAddress"]) || ep_mac {
        return bad("conflicting options: mac-address and the network mode");
    }
    if set(&hc["PortBindings"]) || hc["PublishAllPorts"].as_bool().unwrap_or(false) {
        return bad("conflicting options: port publishing and the container type network mode");
    }
    if set(&body["ExposedPorts"]) {
        return bad("conflicting options: port exposing and the container type network mode");
    }
    Ok(())
}

/// dockerd's `registerLinks` checks at create (not for user-defined
/// networks, where a link is only a DNS alias): every linked container
/// exists (400, as dockerd) and does not use the host's network.
pub fn check_links(hc: &Value, lookup: &dyn Fn(&str) -> Result<Record>) -> Result<()> {
    let mode = hc["NetworkMode"].as_str().unwrap_or("");
    let legacy = ["", "default", "bridge", "none", "host"].contains(&mode)
        || container_target(mode).is_some();
    if !legacy {
        return Ok(());
    }
    for l in util::json_strings(&hc["Links"]) {
        let (name, _) = parse_link(&l)?;
        let not_found = |e: EngineError, n: &str| match e {
            EngineError::NotFound(m) => {
                EngineError::BadRequest(format!("could not get container for {n}: {m}"))
            }
            e => e,
        };
        let mut child = lookup(&name).map_err(|e| not_found(e, &name))?;
        for _ in 0..8 {
            let Some(t) = container_target(child.host_config["NetworkMode"].as_str().unwrap_or(""))
            else {
                break;
            };
            child = lookup(t).map_err(|e| not_found(e, t))?;
        }
        if child.host_config["NetworkMode"] == "host" {
            return Err(EngineError::BadRequest("conflicting options: host type networking can't be used with links. This would result in undefined behavior".into()));
        }
    }
    Ok(())
}

/// dockerd's `ParseLink`: `name[:alias]` (also `/name:/parent/alias`, the
/// form inspect shows) → (name, alias).
pub fn parse_link(l: &str) -> Result<(String, String)> {
    if l.is_empty() {
        return Err(EngineError::BadRequest(
            "empty string specified for links".into(),
        ));
    }
    let parts: Vec<&str> = l.split(':').collect();
    match parts.as_slice() {
        [one] => Ok((one.to_string(), one.to_string())),
        [name, alias] if name.starts_with('/') => Ok((
            name[1..].to_string(),
            alias.rsplit('/').next().unwrap_or(alias).to_string(),
        )),
        [name, alias] if !name.is_empty() && !alias.is_empty() => {
            Ok((name.to_string(), alias.to_string()))
        }
        _ => Err(EngineError::BadRequest(format!(
            "bad format for links: {l}"
        ))),
    }
}

/// An endpoint's `Links` (checked).
pub fn endpoint_links(v: &Value) -> Result<Vec<String>> {
    let links = util::json_strings(v);
    for l in &links {
        parse_link(l)?;
    }
    Ok(links)
}

/// The running container whose network namespace `rec` joins
/// (`container:<x>` mode), with dockerd's errors; `None` for other modes.
pub fn net_target(rec: &Record, lookup: &dyn Fn(&str) -> Result<Record>) -> Result<Option<Record>> {
    let Some(t) = container_target(rec.host_config["NetworkMode"].as_str().unwrap_or("")) else {
        return Ok(None);
    };
    let nc = lookup(t)?;
    if nc.id == rec.id {
        return Err(EngineError::BadRequest("cannot join own network".into()));
    }
    running_target(&nc, t, "network")?;
    Ok(Some(nc))
}

/// The running container whose PID namespace `rec` joins (`PidMode
/// container:<x>`).
pub fn pid_target(rec: &Record, lookup: &dyn Fn(&str) -> Result<Record>) -> Result<Option<Record>> {
    let Some(t) = container_target(rec.host_config["PidMode"].as_str().unwrap_or("")) else {
        return Ok(None);
    };
    let nc = lookup(t).map_err(|e| match e {
        EngineError::NotFound(m) => EngineError::NotFound(format!(
            "cannot join PID of a non running container: {t}: {m}"
        )),
        e => e,
    })?;
    if nc.id == rec.id {
        return Err(EngineError::BadRequest(
            "cannot join own PID namespace".into(),
        ));
    }
    running_target(&nc, t, "PID")?;
    Ok(Some(nc))
}

/// The running container whose IPC namespace `rec` joins (`IpcMode
/// container:<x>`) with the host path of its /dev/shm (`shm_of`: a
/// shareable, `host` or itself joining container's; `None`: not
/// shareable), with dockerd's errors.
pub fn ipc_target(
    rec: &Record,
    lookup: &dyn Fn(&str) -> Result<Record>,
    shm_of: &dyn Fn(&Record) -> Option<std::path::PathBuf>,
) -> Result<Option<(Record, std::path::PathBuf)>> {
    let Some(t) = container_target(rec.host_config["IpcMode"].as_str().unwrap_or("")) else {
        return Ok(None);
    };
    let nc = lookup(t).map_err(|e| match e {
        EngineError::NotFound(m) => {
            EngineError::NotFound(format!("can't join IPC of container {t}: {m}"))
        }
        e => e,
    })?;
    if nc.id == rec.id {
        return Err(EngineError::BadRequest(
            "cannot join own IPC namespace".into(),
        ));
    }
    running_target(&nc, t, "IPC")?;
    let Some(shm) = shm_of(&nc).filter(|p| p.is_dir()) else {
        return Err(EngineError::BadRequest(format!(
            "can't join IPC of container {t}: non-shareable IPC \
             (hint: use IpcMode:shareable for the donor container)"
        )));
    };
    Ok(Some((nc, shm)))
}

/// `IpcMode container:<x>`: the target's IPC namespace and (`None` when the
/// container mounts its own /dev/shm) its /dev/shm.
pub fn patch_ipc(spec: &mut Value, target_pid: u32, shm: Option<&std::path::Path>) {
    if !spec["linux"]["namespaces"].is_array() {
        spec["linux"]["namespaces"] = json!([]);
    }
    let path = format!("/proc/{target_pid}/ns/ipc");
    if let Some(ns) = spec["linux"]["namespaces"].as_array_mut() {
        match ns.iter_mut().find(|n| n["type"] == "ipc") {
            Some(n) => n["path"] = json!(path),
            None => ns.push(json!({"type": "ipc", "path": path})),
        }
    }
    let Some(shm) = shm else {
        return;
    };
    let bind = json!({
        "destination": "/dev/shm", "type": "bind",
        "source": shm.display().to_string(), "options": ["rbind", "rprivate"],
    });
    if !spec["mounts"].is_array() {
        spec["mounts"] = json!([]);
    }
    if let Some(ms) = spec["mounts"].as_array_mut() {
        match ms.iter_mut().find(|m| m["destination"] == "/dev/shm") {
            Some(m) => *m = bind,
            None => ms.push(bind),
        }
    }
}

fn running_target(nc: &Record, key: &str, what: &str) -> Result<()> {
    if nc.state.restarting {
        return Err(EngineError::Conflict(format!(
            "Container {key} is restarting, wait until the container is running"
        )));
    }
    if !nc.state.running || nc.state.pid == 0 {
        return Err(EngineError::Conflict(format!(
            "cannot join {what} of a non running container: {key}"
        )));
    }
    Ok(())
}

/// Legacy links of a container on the default bridge, resolved at its
/// start: (alias, child) per `HostConfig.Links` entry. Children in
/// `container:` mode stand for the container owning their namespace;
/// removed children are skipped (dockerd drops such links); a stopped
/// child or one off the default bridge is dockerd's error.
pub fn legacy_links(
    rec: &Record,
    default_bridge: Option<&str>,
    lookup: &dyn Fn(&str) -> Result<Record>,
) -> Result<Vec<(String, Record)>> {
    let Some(bridge_id) = default_bridge else {
        return Ok(Vec::new());
    };
    if !rec.networks.values().any(|e| e.network_id == bridge_id) {
        return Ok(Vec::new());
    }
    let mut out = Vec::new();
    for l in util::json_strings(&rec.host_config["Links"]) {
        let (name, alias) = parse_link(&l)?;
        let mut child = match lookup(&name) {
            Ok(c) => c,
            Err(EngineError::NotFound(_)) => {
                tracing::debug!(id = %rec.id, link = %l, "linked container is gone; link skipped");
                continue;
            }
            Err(e) => return Err(e),
        };
        for _ in 0..8 {
            let Some(t) = container_target(child.host_config["NetworkMode"].as_str().unwrap_or(""))
            else {
                break;
            };
            child = lookup(t)?;
        }
        let parent = rec.name.clone();
        if !child.state.running {
            return Err(EngineError::Internal(format!(
                "Cannot link to a non running container: {} AS {parent}/{alias}",
                child.name
            )));
        }
        if !child
            .networks
            .values()
            .any(|e| e.network_id == bridge_id && !e.ip.is_empty())
        {
            return Err(EngineError::Internal(format!(
                "Cannot link to {}, as it does not belong to the default network",
                child.name
            )));
        }
        out.push((alias, child));
    }
    Ok(out)
}

/// The /etc/hosts line of a legacy link: (names, address) — the alias, the
/// child's hostname and (when not the alias) its name, as dockerd.
pub fn link_hosts_line(alias: &str, child: &Record, bridge_id: &str) -> (String, String) {
    let ip = child
        .networks
        .values()
        .find(|e| e.network_id == bridge_id)
        .map(|e| e.ip.clone())
        .unwrap_or_default();
    let name = child.name.trim_start_matches('/');
    let mut names = format!("{alias} {}", child.config.hostname);
    if alias != name {
        names.push(' ');
        names.push_str(name);
    }
    (names, ip)
}

/// dockerd's link environment (`links.Link.ToEnv`): `ALIAS_PORT`,
/// `ALIAS_PORT_<port>_<PROTO>[_ADDR|_PORT|_PROTO]` (with `_START`/`_END`
/// for runs of consecutive ports), `ALIAS_NAME=/parent/alias` and
/// `ALIAS_ENV_<k>` for the child's variables (not HOME nor PATH).
pub fn link_env(parent_name: &str, alias: &str, child: &Record, bridge_id: &str) -> Vec<String> {
    let ip = child
        .networks
        .values()
        .find(|e| e.network_id == bridge_id)
        .map(|e| e.ip.clone())
        .unwrap_or_default();
    let a = alias.to_ascii_uppercase().replace('-', "_");
    let mut ports: Vec<(u16, String)> = child
        .config
        .exposed_ports
        .as_ref()
        .and_then(|v| v.as_object())
        .map(|o| {
            o.keys()
                .filter_map(|k| {
                    let (p, proto) = k.split_once('/').unwrap_or((k, "tcp"));
                    Some((p.parse().ok()?, proto.to_ascii_lowercase()))
                })
                .collect()
        })
        .unwrap_or_default();
    // Go's sort with "lower number first, tcp first on a tie".
    ports.sort_by(|x, y| {
        x.0.cmp(&y.0)
            .then_with(|| (x.1 != "tcp").cmp(&(y.1 != "tcp")))
    });
    let mut env = Vec::new();
    if let Some((p, proto)) = ports.first() {
        env.push(format!("{a}_PORT={proto}://{ip}:{p}"));
    }
    let next_contiguous = |value: u16, index: usize| -> usize {
        if index + 1 == ports.len() {
            return index;
        }
        // Go's nextContiguous: the expected number grows by one per entry.
        for (v, (i, q)) in (value as u32..).zip(ports.iter().enumerate().skip(index + 1)) {
            if q.0 as u32 > v + 1 {
                return i - 1;
            }
        }
        ports.len() - 1
    };
    let mut i = 0;
    while i < ports.len() {
        let (p, proto) = &ports[i];
        let up = proto.to_ascii_uppercase();
        let j = next_contiguous(*p, i);
        if j > i + 1 {
            let (q, qproto) = &ports[j];
            let qup = qproto.to_ascii_uppercase();
            env.push(format!("{a}_PORT_{p}_{up}_START={proto}://{ip}:{p}"));
            env.push(format!("{a}_PORT_{p}_{up}_ADDR={ip}"));
            env.push(format!("{a}_PORT_{p}_{up}_PROTO={proto}"));
            env.push(format!("{a}_PORT_{p}_{up}_PORT_START={p}"));
            env.push(format!("{a}_PORT_{p}_{qup}_END={qproto}://{ip}:{q}"));
            env.push(format!("{a}_PORT_{p}_{qup}_PORT_END={q}"));
        }
        for (p, proto) in &ports[i..=j] {
            let up = proto.to_ascii_uppercase();
            env.push(format!("{a}_PORT_{p}_{up}={proto}://{ip}:{p}"));
            env.push(format!("{a}_PORT_{p}_{up}_ADDR={ip}"));
            env.push(format!("{a}_PORT_{p}_{up}_PORT={p}"));
            env.push(format!("{a}_PORT_{p}_{up}_PROTO={proto}"));
        }
        i = j + 1;
    }
    env.push(format!("{a}_NAME={parent_name}/{alias}"));
    for v in &child.config.env {
        let Some((k, val)) = v.split_once('=') else {
            continue;
        };
        if k == "HOME" || k == "PATH" {
            continue;
        }
        env.push(format!("{a}_ENV_{k}={val}"));
    }
    env
}

/// The start-time parts of an OCI spec built at create: the namespaces
/// joined (`container:` network/PID modes, `/proc/<pid>/ns/…` of the
/// targets' init), for a shared network also the target's hostname and
/// hosts/resolv.conf/hostname files, and the process environment.
pub fn patch_spec(
    spec: &mut Value,
    net: Option<&Record>,
    pid: Option<&Record>,
    env: Option<Vec<String>>,
) {
    let set_ns = |spec: &mut Value, typ: &str, path: String| {
        if !spec["linux"]["namespaces"].is_array() {
            spec["linux"]["namespaces"] = json!([]);
        }
        if let Some(ns) = spec["linux"]["namespaces"].as_array_mut() {
            match ns.iter_mut().find(|n| n["type"] == typ) {
                Some(n) => n["path"] = json!(path),
                None => ns.push(json!({"type": typ, "path": path})),
            }
        }
    };
    if let Some(t) = net {
        set_ns(spec, "network", format!("/proc/{}/ns/net", t.state.pid));
        spec["hostname"] = json!(t.config.hostname);
        if let Some(ms) = spec["mounts"].as_array_mut() {
            for m in ms.iter_mut() {
                let src = match m["destination"].as_str() {
                    Some("/etc/hosts") => &t.hosts_path,
                    Some("/etc/resolv.conf") => &t.resolv_conf_path,
                    Some("/etc/hostname") => &t.hostname_path,
                    _ => continue,
                };
                m["source"] = json!(src);
            }
        }
    }
    if let Some(t) = pid {
        set_ns(spec, "pid", format!("/proc/{}/ns/pid", t.state.pid));
    }
    if let Some(env) = env {
        spec["process"]["env"] = json!(env);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(name: &str, v: Value) -> Record {
        let mut base = json!({
            "id": format!("{name}0123456789abcdef"), "name": format!("/{name}"), "created": "",
            "path": "sh", "args": [], "config": {}, "host_config": {}, "auto_remove": false,
            "image": "", "image_name": "", "state": State::default(), "log_path": "",
            "hostname_path": format!("/d/{name}/hostname"), "hosts_path": format!("/d/{name}/hosts"),
            "resolv_conf_path": format!("/d/{name}/resolv.conf"),
        });
        if let (Some(b), Some(o)) = (base.as_object_mut(), v.as_object()) {
            for (k, x) in o {
                b.insert(k.clone(), x.clone());
            }
        }
        serde_json::from_value(base).unwrap()
    }
    use crate::containers::State;

    #[test]
    fn links_parse_like_dockerd() {
        assert_eq!(parse_link("a:al").unwrap(), ("a".into(), "al".into()));
        assert_eq!(parse_link("a").unwrap(), ("a".into(), "a".into()));
        assert_eq!(parse_link("/a:/b/al").unwrap(), ("a".into(), "al".into()));
        assert!(
            matches!(parse_link("a:b:c"), Err(EngineError::BadRequest(m)) if m == "bad format for links: a:b:c")
        );
        assert!(parse_link("").is_err());
    }

    #[test]
    fn container_mode_conflicts() {
        let hc = |v: Value| v;
        let ok = check_network_mode(&json!({}), &hc(json!({"NetworkMode": "container:a"})));
        assert!(ok.is_ok());
        for (body, h, msg) in [
            (
                json!({}),
                json!({"NetworkMode": "container:"}),
                "invalid container format",
            ),
            (
                json!({"Hostname": "x"}),
                json!({"NetworkMode": "container:a"}),
                "hostname and the network mode",
            ),
            (
                json!({}),
                json!({"NetworkMode": "container:a", "Links": ["b:c"]}),
                "container type network can't be used with links",
            ),
            (
                json!({}),
                json!({"NetworkMode": "container:a", "Dns": ["1.1.1.1"]}),
                "dns and the network mode",
            ),
            (
                json!({}),
                json!({"NetworkMode": "container:a", "ExtraHosts": ["h:1.2.3.4"]}),
                "custom host-to-IP mapping",
            ),
            (
                json!({"MacAddress": "02:42:ac:11:00:02"}),
                json!({"NetworkMode": "container:a"}),
                "mac-address",
            ),
            (
                json!({}),
                json!({"NetworkMode": "container:a", "PortBindings": {"80/tcp": [{"HostPort": "8080"}]}}),
                "port publishing",
            ),
            (
                json!({}),
                json!({"NetworkMode": "container:a", "PublishAllPorts": true}),
                "port publishing",
            ),
            (
                json!({"ExposedPorts": {"80/tcp": {}}}),
                json!({"NetworkMode": "container:a"}),
                "port exposing",
            ),
            (
                json!({}),
                json!({"NetworkMode": "host", "Links": ["b:c"]}),
                "host type networking",
            ),
        ] {
            match check_network_mode(&body, &h) {
                Err(EngineError::BadRequest(m)) => assert!(m.contains(msg), "{m} vs {msg}"),
                other => panic!("{h}: {other:?}"),
            }
        }
    }

    #[test]
    fn link_env_matches_dockerd() {
        let child = rec(
            "db",
            json!({"config": {"Env": ["PATH=/bin", "HOME=/root", "PW=s3cret"],
                              "ExposedPorts": {"5432/tcp": {}, "8000/udp": {}, "8001/tcp": {}, "8002/tcp": {}, "80/udp": {}, "80/tcp": {}}},
                   "networks": {"bridge": {"network_id": "B", "ip": "10.0.0.3"}}}),
        );
        let env = link_env("/web", "my-db", &child, "B");
        let has = |e: &str| env.iter().any(|x| x == e);
        assert_eq!(env[0], "MY_DB_PORT=tcp://10.0.0.3:80");
        assert!(has("MY_DB_PORT_80_TCP=tcp://10.0.0.3:80"));
        assert!(has("MY_DB_PORT_80_UDP_PROTO=udp"));
        assert!(has("MY_DB_PORT_5432_TCP_ADDR=10.0.0.3"));
        assert!(has("MY_DB_PORT_5432_TCP_PORT=5432"));
        assert!(has("MY_DB_PORT_8000_UDP_START=udp://10.0.0.3:8000"));
        assert!(has("MY_DB_PORT_8000_TCP_END=tcp://10.0.0.3:8002"));
        assert!(has("MY_DB_PORT_8000_TCP_PORT_END=8002"));
        assert!(has("MY_DB_NAME=/web/my-db"));
        assert!(has("MY_DB_ENV_PW=s3cret"));
        assert!(!env
            .iter()
            .any(|e| e.contains("_ENV_PATH") || e.contains("_ENV_HOME")));
        let (names, ip) = link_hosts_line("my-db", &child, "B");
        assert_eq!((names.as_str(), ip.as_str()), ("my-db  db", "10.0.0.3"));
    }

    #[test]
    fn spec_patch_joins_target() {
        let mut t = rec("a", json!({"config": {"Hostname": "ahost"}}));
        t.state.pid = 4242;
        let mut spec = json!({
            "hostname": "bhost",
            "process": {"env": ["X=1"]},
            "linux": {"namespaces": [{"type": "pid"}, {"type": "network"}, {"type": "uts"}]},
            "mounts": [{"destination": "/etc/hosts", "source": "/d/b/hosts"},
                       {"destination": "/etc/resolv.conf", "source": "/d/b/resolv.conf"},
                       {"destination": "/etc/hostname", "source": "/d/b/hostname"},
                       {"destination": "/proc", "source": "proc"}],
        });
        patch_spec(&mut spec, Some(&t), Some(&t), Some(vec!["Y=2".into()]));
        assert_eq!(spec["hostname"], "ahost");
        assert_eq!(spec["linux"]["namespaces"][1]["path"], "/proc/4242/ns/net");
        assert_eq!(spec["linux"]["namespaces"][0]["path"], "/proc/4242/ns/pid");
        assert!(spec["linux"]["namespaces"][2]["path"].is_null());
        assert_eq!(spec["mounts"][0]["source"], "/d/a/hosts");
        assert_eq!(spec["mounts"][1]["source"], "/d/a/resolv.conf");
        assert_eq!(spec["mounts"][2]["source"], "/d/a/hostname");
        assert_eq!(spec["mounts"][3]["source"], "proc");
        assert_eq!(spec["process"]["env"], json!(["Y=2"]));
    }

    #[test]
    fn targets_must_run() {
        let b = rec(
            "b",
            json!({"host_config": {"NetworkMode": "container:a", "PidMode": "container:a"}}),
        );
        let stopped = rec("a", json!({}));
        let look = |_: &str| Ok(stopped.clone());
        match net_target(&b, &look) {
            Err(EngineError::Conflict(m)) => {
                assert_eq!(m, "cannot join network of a non running container: a")
            }
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            pid_target(&b, &look),
            Err(EngineError::Conflict(_))
        ));
        let missing = |k: &str| Err(EngineError::NotFound(format!("No such container: {k}")));
        assert!(matches!(
            net_target(&b, &missing),
            Err(EngineError::NotFound(_))
        ));
        let mut running = rec("a", json!({}));
        running.state.running = true;
        running.state.pid = 7;
        let look = |_: &str| Ok(running.clone());
        assert_eq!(net_target(&b, &look).unwrap().unwrap().state.pid, 7);
        let me = |_: &str| Ok(b.clone());
        assert!(net_target(&b, &me).is_err());
    }
}
