//! Which endpoints serve a registry, and how to speak to each: mirrors,
//! insecure registries, loopback plain HTTP, per-host CA certificates.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::path::PathBuf;

use crate::error::{Error, Result};
use crate::reference::endpoint_host;

/// Hosts configuration of a [`crate::Client`].
#[derive(Debug, Clone)]
pub struct HostsConfig {
    /// Registry domain ("docker.io", "ghcr.io", "fake.example:5000") → its
    /// mirrors, tried in order for pulls before the registry itself. A mirror
    /// is "https://host[:port]", "http://host[:port]" (plain HTTP only) or a
    /// bare "host[:port]" (same rules as a registry). No path allowed.
    pub mirrors: BTreeMap<String, Vec<String>>,
    /// Insecure registries (Docker semantics): "host", "host:port" or an
    /// IP CIDR ("10.0.0.0/8"). HTTPS without certificate verification, falling
    /// back to plain HTTP.
    pub insecure: Vec<String>,
    /// `<certs_dir>/<host[:port]>/*.crt` are extra CAs for that host;
    /// `*.cert` + `*.key` a client certificate (like /etc/docker/certs.d).
    pub certs_dir: Option<PathBuf>,
    /// Trust the system's roots (rustls-native-certs).
    pub system_roots: bool,
    /// Loopback hosts (127.0.0.0/8, ::1, localhost) fall back to plain HTTP
    /// when they do not speak TLS (certificate errors are not bypassed).
    pub loopback_plain_http: bool,
}

impl Default for HostsConfig {
    fn default() -> Self {
        HostsConfig {
            mirrors: BTreeMap::new(),
            insecure: Vec::new(),
            certs_dir: None,
            system_roots: true,
            loopback_plain_http: true,
        }
    }
}

impl HostsConfig {
    /// dockerd's settings: `registry-mirrors` mirror Docker Hub only,
    /// `insecure-registries` as given.
    pub fn docker(
        registry_mirrors: &[String],
        insecure_registries: &[String],
        certs_dir: Option<PathBuf>,
    ) -> HostsConfig {
        let mut mirrors = BTreeMap::new();
        if !registry_mirrors.is_empty() {
            mirrors.insert(
                crate::reference::DEFAULT_DOMAIN.to_string(),
                registry_mirrors.to_vec(),
            );
        }
        HostsConfig {
            mirrors,
            insecure: insecure_registries.to_vec(),
            certs_dir,
            ..Default::default()
        }
    }

    /// Whether a host[:port] is an insecure registry.
    pub fn is_insecure(&self, authority: &str) -> bool {
        let host = host_of(authority);
        let ip: Option<IpAddr> = host.parse().ok();
        self.insecure.iter().any(|i| {
            let i = i
                .trim()
                .trim_start_matches("http://")
                .trim_start_matches("https://")
                .trim_end_matches('/');
            if i == authority || i == host {
                return true;
            }
            match (ip, i.split_once('/')) {
                (Some(ip), Some((net, bits))) => cidr_contains(net, bits, ip),
                _ => false,
            }
        })
    }

    /// Whether a host[:port] is a loopback address or `localhost`.
    pub fn is_loopback(authority: &str) -> bool {
        let host = host_of(authority);
        host == "localhost"
            || host.ends_with(".localhost")
            || host.parse::<IpAddr>().is_ok_and(|a| a.is_loopback())
    }

    /// The endpoints to try for pulls from a registry domain: mirrors first.
    pub(crate) fn pull_endpoints(&self, domain: &str) -> Result<Vec<Endpoint>> {
        let mut out = Vec::new();
        for m in self.mirrors.get(domain).into_iter().flatten() {
            out.push(self.mirror_endpoint(m)?);
        }
        out.push(self.registry_endpoint(domain));
        Ok(out)
    }

    /// The registry's own endpoint (push, login).
    pub(crate) fn registry_endpoint(&self, domain: &str) -> Endpoint {
        let authority = endpoint_host(domain);
        let scheme = self.scheme_for(&authority);
        Endpoint {
            authority,
            scheme,
            mirror: false,
        }
    }

    fn scheme_for(&self, authority: &str) -> SchemePolicy {
        if self.is_insecure(authority) || (self.loopback_plain_http && Self::is_loopback(authority))
        {
            SchemePolicy::HttpsThenHttp
        } else {
            SchemePolicy::Https
        }
    }

    pub(crate) fn mirror_endpoint(&self, m: &str) -> Result<Endpoint> {
        let bad = |why: &str| Error::Config(format!("invalid mirror {m:?}: {why}"));
        let m = m.trim();
        let (scheme, rest) = if let Some(r) = m.strip_prefix("https://") {
            (Some(SchemePolicy::Https), r)
        } else if let Some(r) = m.strip_prefix("http://") {
            (Some(SchemePolicy::Http), r)
        } else if m.contains("://") {
            return Err(bad("only http:// and https:// are supported"));
        } else {
            (None, m)
        };
        let (authority, path) = match rest.split_once('/') {
            Some((a, p)) => (a, p),
            None => (rest, ""),
        };
        if !path.is_empty() {
            return Err(bad("a mirror URL must not have a path"));
        }
        if authority.is_empty()
            || authority.contains(['?', '#', '@', ' '])
            || authority.parse::<http::uri::Authority>().is_err()
        {
            return Err(bad("not a host[:port]"));
        }
        let authority = authority.to_ascii_lowercase();
        let scheme = match scheme {
            // Docker: an insecure mirror given as https:// may still fall back.
            Some(SchemePolicy::Https) if self.is_insecure(&authority) => {
                SchemePolicy::HttpsThenHttp
            }
            Some(s) => s,
            None => self.scheme_for(&authority),
        };
        Ok(Endpoint {
            authority,
            scheme,
            mirror: true,
        })
    }

    /// Checks the configuration (mirror URLs, CIDRs).
    pub fn validate(&self) -> Result<()> {
        for (domain, ms) in &self.mirrors {
            if domain.is_empty() {
                return Err(Error::Config("mirror entry without a registry name".into()));
            }
            for m in ms {
                self.mirror_endpoint(m)?;
            }
        }
        for i in &self.insecure {
            if let Some((net, bits)) = i.split_once('/') {
                if net.parse::<IpAddr>().is_ok() && bits.parse::<u8>().is_err() {
                    return Err(Error::Config(format!(
                        "invalid insecure registry CIDR {i:?}"
                    )));
                }
            }
        }
        Ok(())
    }
}

/// How to reach an endpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum SchemePolicy {
    Https,
    Http,
    /// HTTPS first; plain HTTP when HTTPS fails at the transport level
    /// (except on certificate errors).
    HttpsThenHttp,
}

/// A registry or mirror endpoint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Endpoint {
    /// host[:port]
    pub authority: String,
    pub scheme: SchemePolicy,
    pub mirror: bool,
}

/// The host part of host[:port] / [v6]:port (without brackets).
pub(crate) fn host_of(authority: &str) -> &str {
    if let Some(rest) = authority.strip_prefix('[') {
        rest.split(']').next().unwrap_or("")
    } else if authority.matches(':').count() > 1 {
        authority // bare IPv6
    } else {
        authority.split(':').next().unwrap_or("")
    }
}

fn cidr_contains(net: &str, bits: &str, ip: IpAddr) -> bool {
    let (Ok(net), Ok(bits)) = (net.parse::<IpAddr>(), bits.parse::<u32>()) else {
        return false;
    };
    match (net, ip) {
        (IpAddr::V4(n), IpAddr::V4(a)) if bits <= 32 => {
            let mask = if bits == 0 {
                0
            } else {
                u32::MAX << (32 - bits)
            };
            u32::from(n) & mask == u32::from(a) & mask
        }
        (IpAddr::V6(n), IpAddr::V6(a)) if bits <= 128 => {
            let mask = if bits == 0 {
                0
            } else {
                u128::MAX << (128 - bits)
            };
            u128::from(n) & mask == u128::from(a) & mask
        }
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn insecure_and_loopback() {
        let h = HostsConfig {
            insecure: vec![
                "reg.example:5000".into(),
                "10.1.0.0/16".into(),
                "plain.example".into(),
            ],
            ..Default::default()
        };
        assert!(h.is_insecure("reg.example:5000"));
        assert!(!h.is_insecure("reg.example:5001"));
        assert!(h.is_insecure("plain.example:443"));
        assert!(h.is_insecure("10.1.2.3:5000"));
        assert!(!h.is_insecure("10.2.2.3:5000"));
        assert!(HostsConfig::is_loopback("127.0.0.1:5000"));
        assert!(HostsConfig::is_loopback("[::1]:5000"));
        assert!(HostsConfig::is_loopback("localhost"));
        assert!(!HostsConfig::is_loopback("example.com"));
        assert_eq!(
            h.registry_endpoint("127.0.0.1:5000").scheme,
            SchemePolicy::HttpsThenHttp
        );
        assert_eq!(
            h.registry_endpoint("docker.io").authority,
            "registry-1.docker.io"
        );
        assert_eq!(h.registry_endpoint("docker.io").scheme, SchemePolicy::Https);
    }

    #[test]
    fn mirrors() {
        let h = HostsConfig::docker(
            &[
                "http://127.0.0.1:5001".into(),
                "https://mirror.example/".into(),
            ],
            &[],
            None,
        );
        h.validate().unwrap();
        let eps = h.pull_endpoints("docker.io").unwrap();
        assert_eq!(eps.len(), 3);
        assert_eq!(eps[0].authority, "127.0.0.1:5001");
        assert_eq!(eps[0].scheme, SchemePolicy::Http);
        assert!(eps[0].mirror);
        assert_eq!(eps[1].scheme, SchemePolicy::Https);
        assert!(!eps[2].mirror);
        assert_eq!(h.pull_endpoints("quay.io").unwrap().len(), 1);
        for bad in ["ftp://x", "https://x/path", "https://", "http://a b"] {
            let h = HostsConfig::docker(&[bad.into()], &[], None);
            assert!(h.validate().is_err(), "{bad}");
        }
    }
}
