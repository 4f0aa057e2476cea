//! The embedded DNS responder of a user-defined network: UDP and TCP on
//! the bridge's gateway address, port 53. A/ANY questions for the
//! network's running containers (names, aliases, short IDs, and the
//! asking container's link aliases) are answered here; every other
//! question is forwarded — to the asking container's `--dns` servers when
//! it has some, else to the host's nameservers (`/etc/resolv.conf`) — and
//! the answer relayed. (dockerd listens on
//! 127.0.0.11 inside each container's netns behind an iptables redirect;
//! the gateway address is the simpler equivalent.)

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, UdpSocket};
use tokio::task::JoinHandle;
use tracing::{debug, warn};

/// What to do with a question for a name, asked from an address.
#[derive(Debug, Clone, PartialEq)]
pub enum Lookup {
    /// A container name on the network: answered here.
    Local(Vec<Ipv4Addr>),
    /// Not a container name: forwarded to these nameservers (port 53);
    /// empty = the host's (`/etc/resolv.conf`).
    Forward(Vec<IpAddr>),
}

/// (question name, asker's address) → [`Lookup`], for one network.
pub type Resolver = Arc<dyn Fn(&str, IpAddr) -> Lookup + Send + Sync>;

/// A parsed question.
#[derive(Debug, PartialEq)]
pub struct Question {
    pub id: u16,
    pub flags: u16,
    pub name: String,
    pub qtype: u16,
    /// End offset of the (first) question in the message.
    pub end: usize,
}

/// Parses the header and first question of a DNS query.
pub fn parse_query(m: &[u8]) -> Option<Question> {
    if m.len() < 12 {
        return None;
    }
    let id = u16::from_be_bytes([m[0], m[1]]);
    let flags = u16::from_be_bytes([m[2], m[3]]);
    let qd = u16::from_be_bytes([m[4], m[5]]);
    if flags & 0x8000 != 0 || qd == 0 {
        return None;
    }
    let mut i = 12;
    let mut labels = Vec::new();
    loop {
        let l = *m.get(i)? as usize;
        i += 1;
        if l == 0 {
            break;
        }
        if l > 63 {
            return None; // compression is not valid in a question
        }
        let s = m.get(i..i + l)?;
        labels.push(String::from_utf8_lossy(s).to_ascii_lowercase());
        i += l;
    }
    let qtype = u16::from_be_bytes([*m.get(i)?, *m.get(i + 1)?]);
    let end = i + 4;
    if m.len() < end {
        return None;
    }
    Some(Question {
        id,
        flags,
        name: labels.join("."),
        qtype,
        end,
    })
}

/// The local answer to `q` (query bytes `m`) with addresses `ips`.
pub fn answer(m: &[u8], q: &Question, ips: &[Ipv4Addr]) -> Vec<u8> {
    let give = q.qtype == 1 || q.qtype == 255;
    let n = if give { ips.len() } else { 0 };
    let mut out = Vec::with_capacity(q.end + 16 * n);
    out.extend_from_slice(&q.id.to_be_bytes());
    // QR, opcode copied, AA, RD copied, RA; NOERROR.
    let flags = 0x8000 | (q.flags & 0x7800) | 0x0400 | (q.flags & 0x0100) | 0x0080;
    out.extend_from_slice(&flags.to_be_bytes());
    out.extend_from_slice(&1u16.to_be_bytes());
    out.extend_from_slice(&(n as u16).to_be_bytes());
    out.extend_from_slice(&[0, 0, 0, 0]);
    out.extend_from_slice(&m[12..q.end]);
    if give {
        for ip in ips {
            out.extend_from_slice(&[0xc0, 0x0c, 0, 1, 0, 1]);
            out.extend_from_slice(&600u32.to_be_bytes());
            out.extend_from_slice(&4u16.to_be_bytes());
            out.extend_from_slice(&ip.octets());
        }
    }
    out
}

fn servfail(m: &[u8], q: &Question) -> Vec<u8> {
    let mut out = answer(m, q, &[]);
    out[3] = (out[3] & 0xf0) | 2;
    out
}

/// `servers` (else the host's nameservers), minus `exclude` (orcad's own
/// responder).
fn upstreams(servers: Vec<IpAddr>, exclude: Ipv4Addr) -> Vec<SocketAddr> {
    let servers = if servers.is_empty() {
        std::fs::read_to_string("/etc/resolv.conf")
            .unwrap_or_default()
            .lines()
            .filter_map(|l| {
                let mut w = l.split_whitespace();
                (w.next() == Some("nameserver")).then(|| w.next()).flatten()
            })
            .filter_map(|a| a.parse::<IpAddr>().ok())
            .collect()
    } else {
        servers
    };
    servers
        .into_iter()
        .filter(|a| *a != IpAddr::V4(exclude))
        .map(|a| SocketAddr::new(a, 53))
        .collect()
}

async fn forward(m: &[u8], servers: Vec<IpAddr>, exclude: Ipv4Addr) -> Option<Vec<u8>> {
    for up in upstreams(servers, exclude) {
        let local: SocketAddr = if up.is_ipv4() {
            "0.0.0.0:0".parse().ok()?
        } else {
            "[::]:0".parse().ok()?
        };
        let Ok(s) = UdpSocket::bind(local).await else {
            continue;
        };
        if s.send_to(m, up).await.is_err() {
            continue;
        }
        let mut buf = vec![0u8; 65535];
        if let Ok(Ok((n, _))) =
            tokio::time::timeout(Duration::from_secs(3), s.recv_from(&mut buf)).await
        {
            buf.truncate(n);
            return Some(buf);
        }
        debug!(%up, "upstream nameserver did not answer");
    }
    None
}

async fn respond(m: &[u8], resolve: &Resolver, me: Ipv4Addr, from: IpAddr) -> Option<Vec<u8>> {
    let q = parse_query(m)?;
    let servers = match resolve(q.name.trim_end_matches('.'), from) {
        Lookup::Local(ips) => return Some(answer(m, &q, &ips)),
        Lookup::Forward(s) => s,
    };
    match forward(m, servers, me).await {
        Some(a) => Some(a),
        None => Some(servfail(m, &q)),
    }
}

/// Serves UDP and TCP on `addr:53` until the handles are aborted.
pub async fn serve(addr: Ipv4Addr, resolve: Resolver) -> std::io::Result<Vec<JoinHandle<()>>> {
    let sa = SocketAddr::from((addr, 53));
    let udp = Arc::new(UdpSocket::bind(sa).await?);
    let tcp = TcpListener::bind(sa).await?;
    let r1 = resolve.clone();
    let u = tokio::spawn(async move {
        let mut buf = vec![0u8; 65535];
        loop {
            let (n, from) = match udp.recv_from(&mut buf).await {
                Ok(x) => x,
                Err(e) => {
                    warn!("dns recv: {e}");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            };
            let m = buf[..n].to_vec();
            let (udp, r) = (udp.clone(), r1.clone());
            tokio::spawn(async move {
                if let Some(a) = respond(&m, &r, addr, from.ip()).await {
                    let _ = udp.send_to(&a, from).await;
                }
            });
        }
    });
    let t = tokio::spawn(async move {
        loop {
            let Ok((mut c, peer)) = tcp.accept().await else {
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            };
            let r = resolve.clone();
            tokio::spawn(async move {
                loop {
                    let mut len = [0u8; 2];
                    if tokio::time::timeout(Duration::from_secs(10), c.read_exact(&mut len))
                        .await
                        .map(|r| r.is_err())
                        .unwrap_or(true)
                    {
                        return;
                    }
                    let mut m = vec![0u8; u16::from_be_bytes(len) as usize];
                    if c.read_exact(&mut m).await.is_err() {
                        return;
                    }
                    let Some(a) = respond(&m, &r, addr, peer.ip()).await else {
                        return;
                    };
                    let mut framed = (a.len() as u16).to_be_bytes().to_vec();
                    framed.extend_from_slice(&a);
                    if c.write_all(&framed).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    Ok(vec![u, t])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn query(name: &str, qtype: u16) -> Vec<u8> {
        let mut m = vec![0x12, 0x34, 0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0];
        for l in name.split('.') {
            m.push(l.len() as u8);
            m.extend_from_slice(l.as_bytes());
        }
        m.push(0);
        m.extend_from_slice(&qtype.to_be_bytes());
        m.extend_from_slice(&1u16.to_be_bytes());
        m
    }

    #[test]
    fn parses_and_answers() {
        let m = query("Web.Example", 1);
        let q = parse_query(&m).unwrap();
        assert_eq!(q.name, "web.example");
        assert_eq!(q.qtype, 1);
        let a = answer(&m, &q, &["10.0.0.2".parse().unwrap()]);
        assert_eq!(&a[0..2], &[0x12, 0x34]);
        assert_eq!(a[2] & 0x80, 0x80); // a response
        assert_eq!(u16::from_be_bytes([a[6], a[7]]), 1);
        assert_eq!(&a[a.len() - 4..], &[10, 0, 0, 2]);
        let aaaa = query("web", 28);
        let q = parse_query(&aaaa).unwrap();
        let a = answer(&aaaa, &q, &["10.0.0.2".parse().unwrap()]);
        assert_eq!(u16::from_be_bytes([a[6], a[7]]), 0);
        assert!(parse_query(&m[..10]).is_none());
        let s = servfail(&m, &parse_query(&m).unwrap());
        assert_eq!(s[3] & 0x0f, 2);
    }

    #[test]
    fn upstreams_prefer_the_containers_servers() {
        let gw: Ipv4Addr = "10.1.0.1".parse().unwrap();
        let ups = upstreams(vec!["127.9.9.9".parse().unwrap(), IpAddr::V4(gw)], gw);
        assert_eq!(ups, vec!["127.9.9.9:53".parse::<SocketAddr>().unwrap()]);
    }
}
