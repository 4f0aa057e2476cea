//! Published ports: `HostConfig.PortBindings` / `PublishAllPorts` into
//! mappings, and the userland proxy (docker-proxy's role) that forwards TCP
//! and UDP from the host address/port to the container, so that 127.0.0.1
//! works without `route_localnet`.

use std::collections::{BTreeMap, HashMap};
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use tokio::net::{TcpListener, TcpStream, UdpSocket};
use tokio::task::JoinHandle;
use tracing::{debug, warn};

use super::NetError;

/// One published port of a running container.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Mapping {
    pub proto: String,
    pub container_port: u16,
    pub host_ip: String,
    pub host_port: u16,
    /// The container address it forwards to.
    pub container_ip: String,
    /// The bridge of that address (DNAT rule's `! -i`).
    pub bridge: String,
}

/// What the user asked: (proto, container port, host ip, host port range).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Wanted {
    pub proto: String,
    pub container_port: u16,
    pub host_ip: Ipv4Addr,
    /// (first, last); (0, 0) = ephemeral.
    pub host_ports: (u16, u16),
}

fn parse_key(k: &str) -> Result<(u16, String), NetError> {
    let (p, proto) = k.split_once('/').unwrap_or((k, "tcp"));
    let proto = proto.to_ascii_lowercase();
    if proto != "tcp" && proto != "udp" {
        return Err(NetError::NotImplemented(format!(
            "publishing {proto} ports is not implemented in orcad yet (tcp and udp are)"
        )));
    }
    if p.contains('-') {
        return Err(NetError::NotImplemented(format!(
            "container port ranges ({k}) are not implemented in orcad yet"
        )));
    }
    let port: u16 = p
        .parse()
        .ok()
        .filter(|p| *p > 0)
        .ok_or_else(|| NetError::Invalid(format!("invalid port specification: {k:?}")))?;
    Ok((port, proto))
}

/// The mappings `hc` asks for; `exposed` is the container's ExposedPorts
/// (for `PublishAllPorts`).
pub fn wanted(hc: &Value, exposed: &Value) -> Result<Vec<Wanted>, NetError> {
    let mut out = Vec::new();
    match &hc["PortBindings"] {
        Value::Null => {}
        Value::Object(m) => {
            for (k, v) in m {
                let (cport, proto) = parse_key(k)?;
                let list = match v {
                    Value::Null => vec![json!({})],
                    Value::Array(a) if a.is_empty() => vec![json!({})],
                    Value::Array(a) => a.clone(),
                    _ => {
                        return Err(NetError::Invalid(format!(
                            "PortBindings[{k}] must be a list"
                        )))
                    }
                };
                for b in list {
                    let ip_s = b["HostIp"].as_str().unwrap_or("");
                    let host_ip: Ipv4Addr = if ip_s.is_empty() {
                        Ipv4Addr::UNSPECIFIED
                    } else {
                        ip_s.parse().map_err(|_| {
                            if ip_s.contains(':') {
                                NetError::NotImplemented(format!(
                                    "IPv6 host address {ip_s} is not implemented in orcad yet"
                                ))
                            } else {
                                NetError::Invalid(format!("invalid host IP {ip_s:?}"))
                            }
                        })?
                    };
                    let hp = b["HostPort"].as_str().unwrap_or("");
                    let host_ports = if hp.is_empty() || hp == "0" {
                        (0, 0)
                    } else {
                        let bad = || NetError::Invalid(format!("invalid host port {hp:?}"));
                        match hp.split_once('-') {
                            Some((a, b)) => {
                                let a: u16 = a.parse().map_err(|_| bad())?;
                                let b: u16 = b.parse().map_err(|_| bad())?;
                                if a == 0 || b < a {
                                    return Err(bad());
                                }
                                (a, b)
                            }
                            None => {
                                let p: u16 = hp.parse().map_err(|_| bad())?;
                                (p, p)
                            }
                        }
                    };
                    out.push(Wanted {
                        proto: proto.clone(),
                        container_port: cport,
                        host_ip,
                        host_ports,
                    });
                }
            }
        }
        _ => {
            return Err(NetError::Invalid(
                "HostConfig.PortBindings must be an object".into(),
            ))
        }
    }
    if hc["PublishAllPorts"].as_bool().unwrap_or(false) {
        if let Some(m) = exposed.as_object() {
            for k in m.keys() {
                let (cport, proto) = parse_key(k)?;
                if !out
                    .iter()
                    .any(|w| w.container_port == cport && w.proto == proto)
                {
                    out.push(Wanted {
                        proto,
                        container_port: cport,
                        host_ip: Ipv4Addr::UNSPECIFIED,
                        host_ports: (0, 0),
                    });
                }
            }
        }
    }
    Ok(out)
}

/// Checks PortBindings at create (a bad one fails the create).
pub fn check(hc: &Value) -> Result<(), NetError> {
    wanted(hc, &Value::Null).map(|_| ())
}

/// Docker's `NetworkSettings.Ports`: every exposed or bound port, with its
/// host bindings while running.
pub fn ports_json(exposed: &Value, maps: &[Mapping]) -> Value {
    let mut m: BTreeMap<String, Value> = BTreeMap::new();
    if let Some(e) = exposed.as_object() {
        for k in e.keys() {
            let key = if k.contains('/') {
                k.clone()
            } else {
                format!("{k}/tcp")
            };
            m.insert(key, Value::Null);
        }
    }
    for p in maps {
        let key = format!("{}/{}", p.container_port, p.proto);
        let b = json!({"HostIp": p.host_ip, "HostPort": p.host_port.to_string()});
        match m.get_mut(&key) {
            Some(Value::Array(a)) => a.push(b),
            _ => {
                m.insert(key, json!([b]));
            }
        }
    }
    json!(m)
}

/// `Ports` of `GET /containers/json`.
pub fn list_json(maps: &[Mapping]) -> Value {
    Value::Array(
        maps.iter()
            .map(|p| {
                json!({"IP": p.host_ip, "PrivatePort": p.container_port,
                       "PublicPort": p.host_port, "Type": p.proto})
            })
            .collect(),
    )
}

/// A bound host socket, ready to proxy.
pub enum Bound {
    Tcp(TcpListener),
    Udp(UdpSocket),
    /// No userland proxy: the port was only checked free.
    None,
}

/// Binds the host side of `w` (trying its port range, or an ephemeral
/// port), returning the socket and the port.
pub async fn bind(w: &Wanted, proxy: bool) -> Result<(Bound, u16), NetError> {
    let ports: Vec<u16> = if w.host_ports == (0, 0) {
        vec![0]
    } else {
        (w.host_ports.0..=w.host_ports.1).collect()
    };
    let mut last = None;
    for p in ports {
        let addr = SocketAddr::from((w.host_ip, p));
        let r = if w.proto == "udp" {
            UdpSocket::bind(addr).await.and_then(|s| {
                let port = s.local_addr()?.port();
                Ok((Bound::Udp(s), port))
            })
        } else {
            TcpListener::bind(addr).await.and_then(|s| {
                let port = s.local_addr()?.port();
                Ok((Bound::Tcp(s), port))
            })
        };
        match r {
            Ok((b, port)) => return Ok((if proxy { b } else { Bound::None }, port)),
            Err(e) => last = Some((addr, e)),
        }
    }
    let (addr, e) = last.expect("at least one port tried");
    Err(NetError::PortInUse(format!(
        "Bind for {addr} failed: port is already allocated ({e})"
    )))
}

/// Forwards connections/datagrams from `b` to `dest` until aborted.
pub fn spawn_proxy(b: Bound, dest: SocketAddr) -> Option<JoinHandle<()>> {
    match b {
        Bound::None => None,
        Bound::Tcp(l) => Some(tokio::spawn(async move {
            let mut conns = tokio::task::JoinSet::new();
            loop {
                tokio::select! {
                    acc = l.accept() => match acc {
                        Ok((mut inbound, from)) => {
                            conns.spawn(async move {
                                match TcpStream::connect(dest).await {
                                    Ok(mut out) => {
                                        let _ = tokio::io::copy_bidirectional(&mut inbound, &mut out).await;
                                    }
                                    Err(e) => debug!(%from, %dest, "proxy connect failed: {e}"),
                                }
                            });
                        }
                        Err(e) => {
                            warn!("proxy accept: {e}");
                            tokio::time::sleep(Duration::from_millis(50)).await;
                        }
                    },
                    Some(_) = conns.join_next(), if !conns.is_empty() => {}
                }
            }
        })),
        Bound::Udp(s) => Some(tokio::spawn(udp_proxy(Arc::new(s), dest))),
    }
}

/// UDP: one upstream socket per client address, replies relayed back;
/// idle flows end after 90 s.
async fn udp_proxy(front: Arc<UdpSocket>, dest: SocketAddr) {
    let flows: Arc<tokio::sync::Mutex<HashMap<SocketAddr, Arc<UdpSocket>>>> = Default::default();
    let mut tasks = tokio::task::JoinSet::new();
    let mut buf = vec![0u8; 65535];
    loop {
        let (n, from) = match front.recv_from(&mut buf).await {
            Ok(x) => x,
            Err(e) => {
                warn!("udp proxy recv: {e}");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let up = {
            let mut f = flows.lock().await;
            match f.get(&from) {
                Some(s) => s.clone(),
                None => {
                    let Ok(s) = UdpSocket::bind("0.0.0.0:0").await else {
                        continue;
                    };
                    if s.connect(dest).await.is_err() {
                        continue;
                    }
                    let s = Arc::new(s);
                    f.insert(from, s.clone());
                    let (s2, front2, flows2) = (s.clone(), front.clone(), flows.clone());
                    tasks.spawn(async move {
                        let mut b = vec![0u8; 65535];
                        while let Ok(Ok(n)) =
                            tokio::time::timeout(Duration::from_secs(90), s2.recv(&mut b)).await
                        {
                            let _ = front2.send_to(&b[..n], from).await;
                        }
                        flows2.lock().await.remove(&from);
                    });
                    s
                }
            }
        };
        let _ = up.send(&buf[..n]).await;
    }
}
