//! IPv4 subnets and address allocation (dockerd's default IPAM, IPv4 only).

use std::collections::BTreeMap;
use std::fmt;
use std::net::Ipv4Addr;
use std::str::FromStr;

/// An IPv4 network `a.b.c.d/len` (host bits cleared).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Subnet {
    pub addr: Ipv4Addr,
    pub len: u8,
}

impl Subnet {
    fn mask(len: u8) -> u32 {
        if len == 0 {
            0
        } else {
            u32::MAX << (32 - len as u32)
        }
    }

    /// The network containing `ip` with prefix `len`.
    pub fn new(ip: Ipv4Addr, len: u8) -> Subnet {
        Subnet {
            addr: Ipv4Addr::from(u32::from(ip) & Self::mask(len)),
            len,
        }
    }

    pub fn contains(&self, ip: Ipv4Addr) -> bool {
        u32::from(ip) & Self::mask(self.len) == u32::from(self.addr)
    }

    pub fn overlaps(&self, o: &Subnet) -> bool {
        let l = self.len.min(o.len);
        u32::from(self.addr) & Self::mask(l) == u32::from(o.addr) & Self::mask(l)
    }

    fn first(&self) -> u32 {
        u32::from(self.addr)
    }

    fn last(&self) -> u32 {
        self.first() | !Self::mask(self.len)
    }

    /// The first usable address (dockerd's default gateway).
    pub fn first_host(&self) -> Ipv4Addr {
        Ipv4Addr::from(self.first() + 1)
    }

    /// Splits into subnets of prefix `len` (in order).
    pub fn split(&self, len: u8) -> Vec<Subnet> {
        if len < self.len || len > 30 {
            return Vec::new();
        }
        let step = 1u64 << (32 - len as u32);
        let mut out = Vec::new();
        let mut a = self.first() as u64;
        while a <= self.last() as u64 {
            out.push(Subnet::new(Ipv4Addr::from(a as u32), len));
            a += step;
        }
        out
    }

    /// The lowest address of the subnet not yet taken (network, broadcast,
    /// gateway and `used` excluded).
    pub fn allocate(&self, gateway: Ipv4Addr, used: &BTreeMap<String, String>) -> Option<Ipv4Addr> {
        if self.len > 30 {
            return None;
        }
        (self.first() + 1..self.last())
            .map(Ipv4Addr::from)
            .find(|ip| *ip != gateway && !used.contains_key(&ip.to_string()))
    }
}

impl fmt::Display for Subnet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.len)
    }
}

impl FromStr for Subnet {
    type Err = String;
    /// `a.b.c.d/len`; host bits must be clear (as dockerd's IPAM asks).
    fn from_str(s: &str) -> Result<Subnet, String> {
        let (ip, len) = s
            .split_once('/')
            .ok_or_else(|| format!("invalid CIDR address: {s}"))?;
        let ip: Ipv4Addr = ip
            .parse()
            .map_err(|_| format!("invalid CIDR address: {s} (only IPv4 is implemented)"))?;
        let len: u8 = len
            .parse()
            .ok()
            .filter(|l| *l <= 32)
            .ok_or_else(|| format!("invalid CIDR address: {s}"))?;
        Ok(Subnet::new(ip, len))
    }
}

/// `--bip 172.17.0.1/16`: the gateway address and its subnet.
pub fn parse_bip(s: &str) -> Result<(Ipv4Addr, Subnet), String> {
    let (ip, len) = s
        .split_once('/')
        .ok_or_else(|| format!("invalid --bip {s:?} (want ADDRESS/PREFIX, e.g. 172.17.0.1/16)"))?;
    let ip: Ipv4Addr = ip.parse().map_err(|_| format!("invalid --bip {s:?}"))?;
    let len: u8 = len
        .parse()
        .ok()
        .filter(|l| (1..=30).contains(l))
        .ok_or_else(|| format!("invalid --bip {s:?}: prefix must be 1..30"))?;
    let sn = Subnet::new(ip, len);
    if ip == sn.addr || u32::from(ip) == sn.last() {
        return Err(format!(
            "invalid --bip {s:?}: the network or broadcast address"
        ));
    }
    Ok((ip, sn))
}

/// One `default-address-pools` entry: a base network cut into `size` blocks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Pool {
    pub base: Subnet,
    pub size: u8,
}

impl Pool {
    /// `base=10.10.0.0/16,size=24` (dockerd's `--default-address-pool`).
    pub fn parse(s: &str) -> Result<Pool, String> {
        let mut base = None;
        let mut size = None;
        for kv in s.split(',') {
            match kv.split_once('=') {
                Some(("base", v)) => base = Some(v.parse::<Subnet>()?),
                Some(("size", v)) => {
                    size = Some(
                        v.parse::<u8>()
                            .map_err(|_| format!("invalid pool size in {s:?}"))?,
                    )
                }
                _ => {
                    return Err(format!(
                        "invalid address pool {s:?} (want base=CIDR,size=N)"
                    ))
                }
            }
        }
        let (Some(base), Some(size)) = (base, size) else {
            return Err(format!(
                "invalid address pool {s:?} (want base=CIDR,size=N)"
            ));
        };
        if size < base.len || size > 30 {
            return Err(format!(
                "invalid address pool {s:?}: size must be between the base prefix and 30"
            ));
        }
        Ok(Pool { base, size })
    }
}

/// dockerd's default pools: 172.17.0.0/16 … 172.31.0.0/16, then
/// 192.168.0.0/16 in /20s.
pub fn default_pools() -> Vec<Pool> {
    vec![
        Pool {
            base: Subnet::new(Ipv4Addr::new(172, 17, 0, 0), 12),
            size: 16,
        },
        Pool {
            base: Subnet::new(Ipv4Addr::new(192, 168, 0, 0), 16),
            size: 20,
        },
    ]
}

/// The candidate subnets of the pools, in order (172.16.0.0/16 is skipped
/// as dockerd's 172.17-based list does).
pub fn candidates(pools: &[Pool]) -> Vec<Subnet> {
    let mut out = Vec::new();
    for p in pools {
        for s in p.base.split(p.size) {
            // dockerd's first pool starts at 172.17.0.0/16.
            if p.base == Subnet::new(Ipv4Addr::new(172, 17, 0, 0), 12)
                && s.addr == Ipv4Addr::new(172, 16, 0, 0)
            {
                continue;
            }
            out.push(s);
        }
    }
    out
}

/// Docker's MAC for an address: 02:42 then the four address bytes.
pub fn mac_for(ip: Ipv4Addr) -> [u8; 6] {
    let o = ip.octets();
    [0x02, 0x42, o[0], o[1], o[2], o[3]]
}

pub fn mac_string(m: &[u8; 6]) -> String {
    m.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subnets_and_allocation() {
        let s: Subnet = "10.1.2.3/24".parse().unwrap();
        assert_eq!(s.to_string(), "10.1.2.0/24");
        assert!(s.contains("10.1.2.200".parse().unwrap()));
        assert!(!s.contains("10.1.3.1".parse().unwrap()));
        let big: Subnet = "10.1.0.0/16".parse().unwrap();
        assert!(s.overlaps(&big) && big.overlaps(&s));
        assert!(!s.overlaps(&"10.2.0.0/16".parse().unwrap()));
        let gw = s.first_host();
        assert_eq!(gw.to_string(), "10.1.2.1");
        let mut used = BTreeMap::new();
        assert_eq!(s.allocate(gw, &used).unwrap().to_string(), "10.1.2.2");
        used.insert("10.1.2.2".to_string(), "c".to_string());
        assert_eq!(s.allocate(gw, &used).unwrap().to_string(), "10.1.2.3");
        let tiny: Subnet = "10.9.9.0/30".parse().unwrap();
        let mut u = BTreeMap::new();
        u.insert("10.9.9.2".to_string(), "x".to_string());
        assert_eq!(tiny.allocate(tiny.first_host(), &u), None);
        assert!("10.0.0.0".parse::<Subnet>().is_err());
        assert!("fd00::/64".parse::<Subnet>().is_err());
    }

    #[test]
    fn pools() {
        let c = candidates(&default_pools());
        assert_eq!(c[0].to_string(), "172.17.0.0/16");
        assert_eq!(c[14].to_string(), "172.31.0.0/16");
        assert_eq!(c[15].to_string(), "192.168.0.0/20");
        assert_eq!(c.len(), 15 + 16);
        let p = Pool::parse("base=10.200.0.0/16,size=24").unwrap();
        assert_eq!(candidates(&[p]).len(), 256);
        assert!(Pool::parse("base=10.0.0.0/16").is_err());
        assert!(parse_bip("10.5.0.1/24").is_ok());
        assert!(parse_bip("10.5.0.0/24").is_err());
        assert_eq!(
            mac_string(&mac_for("172.17.0.2".parse().unwrap())),
            "02:42:ac:11:00:02"
        );
    }
}
