//! orcad's bridge driver: Linux bridges, IPv4 address management, veth
//! pairs into containers' network namespaces, iptables NAT/forwarding/
//! isolation, published ports (DNAT plus a userland proxy) and an embedded
//! DNS responder per user-defined network. [`crate::networks`] keeps the
//! records and drives this module.

pub mod dns;
pub mod ipam;
pub mod iptables;
pub mod link;
pub mod portmap;

use std::net::Ipv4Addr;

/// Networking failures (mapped to Docker API errors by the caller).
#[derive(Debug, thiserror::Error)]
pub enum NetError {
    #[error("netlink: {0}")]
    Netlink(String),
    #[error("{0}")]
    Iptables(String),
    #[error("{0}")]
    Invalid(String),
    #[error("{0}")]
    NotImplemented(String),
    #[error("{0}")]
    PortInUse(String),
    #[error("{0}")]
    Exhausted(String),
}

impl From<NetError> for crate::EngineError {
    fn from(e: NetError) -> Self {
        use crate::EngineError as E;
        match e {
            NetError::Invalid(m) => E::BadRequest(m),
            NetError::NotImplemented(m) => E::NotImplemented(m),
            NetError::PortInUse(m) => E::Internal(m),
            other => E::Internal(other.to_string()),
        }
    }
}

/// Daemon networking settings (dockerd's flags of the same names).
#[derive(Debug, Clone, PartialEq)]
pub struct NetConfig {
    /// `--bridge`: the default bridge's link name; "none" disables the
    /// default network (containers then keep loopback only).
    pub bridge: String,
    /// `--bip`: the default bridge's address/prefix (else from the pools).
    pub bip: Option<String>,
    /// `--iptables`: manage NAT/forwarding rules.
    pub iptables: bool,
    /// `--userland-proxy`: forward published ports in orcad too.
    pub userland_proxy: bool,
    /// `--ip`: the default host address of published ports.
    pub ip: Ipv4Addr,
    /// `--default-address-pool base=CIDR,size=N`.
    pub pools: Vec<ipam::Pool>,
    /// `--iptables-chain`: prefix of orcad's iptables chains.
    pub chain: String,
    /// `--host-gateway-ip`: what `--add-host NAME:host-gateway` maps to
    /// (else the default bridge's gateway).
    pub host_gateway_ip: Option<std::net::IpAddr>,
}

impl Default for NetConfig {
    fn default() -> Self {
        NetConfig {
            bridge: "orca0".into(),
            bip: None,
            iptables: true,
            userland_proxy: true,
            ip: Ipv4Addr::UNSPECIFIED,
            pools: ipam::default_pools(),
            chain: "ORCA".into(),
            host_gateway_ip: None,
        }
    }
}

/// Networking settings as given (flags or daemon.json); `None` = not set.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct NetOptions {
    pub bridge: Option<String>,
    pub bip: Option<String>,
    pub iptables: Option<bool>,
    pub userland_proxy: Option<bool>,
    pub ip: Option<String>,
    pub pools: Option<Vec<String>>,
    pub chain: Option<String>,
    pub host_gateway_ip: Option<String>,
}

impl NetOptions {
    /// `self` over `file` over the defaults, validated.
    pub fn resolve(&self, file: &NetOptions) -> Result<NetConfig, String> {
        let d = NetConfig::default();
        let bridge = self
            .bridge
            .clone()
            .or(file.bridge.clone())
            .unwrap_or(d.bridge);
        if bridge.is_empty() || bridge.len() > 15 || bridge.contains('/') || bridge.contains(' ') {
            return Err(format!("invalid bridge name {bridge:?} (1-15 characters)"));
        }
        let bip = self.bip.clone().or(file.bip.clone());
        if let Some(b) = &bip {
            ipam::parse_bip(b)?;
        }
        let ip = match self.ip.clone().or(file.ip.clone()) {
            None => d.ip,
            Some(s) => s
                .parse::<Ipv4Addr>()
                .map_err(|_| format!("invalid --ip {s:?} (an IPv4 address)"))?,
        };
        let pools = match self.pools.clone().or(file.pools.clone()) {
            None => d.pools,
            Some(v) if v.is_empty() => d.pools,
            Some(v) => v
                .iter()
                .map(|s| ipam::Pool::parse(s))
                .collect::<Result<_, _>>()?,
        };
        let chain = self.chain.clone().or(file.chain.clone()).unwrap_or(d.chain);
        if chain.is_empty()
            || chain.len() > 14
            || !chain
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
        {
            return Err(format!(
                "invalid iptables chain prefix {chain:?} (1-14 of [A-Za-z0-9_-])"
            ));
        }
        let host_gateway_ip = match self
            .host_gateway_ip
            .clone()
            .or(file.host_gateway_ip.clone())
        {
            None => None,
            Some(s) => Some(
                s.parse::<std::net::IpAddr>()
                    .map_err(|_| format!("invalid --host-gateway-ip {s:?} (an IP address)"))?,
            ),
        };
        Ok(NetConfig {
            host_gateway_ip,
            bridge,
            bip,
            iptables: self.iptables.or(file.iptables).unwrap_or(d.iptables),
            userland_proxy: self
                .userland_proxy
                .or(file.userland_proxy)
                .unwrap_or(d.userland_proxy),
            ip,
            pools,
            chain,
        })
    }
}
