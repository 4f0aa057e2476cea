//! Links, addresses and routes over rtnetlink: the bridges in the host's
//! network namespace, and the container end of a veth pair configured from
//! a dedicated thread that entered the container's namespace (`setns`).

use std::net::{IpAddr, Ipv4Addr};
use std::os::fd::AsRawFd;

use futures_util::TryStreamExt;
use rtnetlink::packet_route::address::AddressAttribute;
use rtnetlink::packet_route::link::LinkAttribute;
use rtnetlink::packet_route::route::{RouteAddress, RouteAttribute};
use rtnetlink::{Handle, LinkBridge, LinkUnspec, LinkVeth, RouteMessageBuilder};

use super::ipam::Subnet;
use super::NetError;

const ENODEV: i32 = 19;
const EEXIST: i32 = 17;

fn nl(what: &str, e: rtnetlink::Error) -> NetError {
    NetError::Netlink(format!("{what}: {e}"))
}

fn errno(e: &rtnetlink::Error) -> i32 {
    match e {
        rtnetlink::Error::NetlinkError(m) => -m.raw_code(),
        _ => 0,
    }
}

/// A netlink connection in the host's namespace.
#[derive(Clone)]
pub struct Host {
    h: Handle,
}

impl Host {
    /// Opens the connection (its socket is driven by a tokio task).
    pub fn connect() -> Result<Host, NetError> {
        let (conn, h, _) = rtnetlink::new_connection()
            .map_err(|e| NetError::Netlink(format!("netlink socket: {e}")))?;
        tokio::spawn(conn);
        Ok(Host { h })
    }

    /// The index of link `name`, if it exists.
    pub async fn index(&self, name: &str) -> Result<Option<u32>, NetError> {
        let mut links = self.h.link().get().match_name(name.to_string()).execute();
        match links.try_next().await {
            Ok(Some(m)) => Ok(Some(m.header.index)),
            Ok(None) => Ok(None),
            Err(e) if errno(&e) == ENODEV => Ok(None),
            Err(e) => Err(nl(&format!("get link {name}"), e)),
        }
    }

    /// Creates bridge `name` (unless it exists) with `gateway/len`, up.
    /// Returns whether it was created now.
    pub async fn ensure_bridge(
        &self,
        name: &str,
        gateway: Ipv4Addr,
        subnet: &Subnet,
    ) -> Result<bool, NetError> {
        let created = match self.index(name).await? {
            Some(_) => false,
            None => {
                self.h
                    .link()
                    .add(LinkBridge::new(name).build())
                    .execute()
                    .await
                    .map_err(|e| nl(&format!("create bridge {name}"), e))?;
                true
            }
        };
        let idx = self
            .index(name)
            .await?
            .ok_or_else(|| NetError::Netlink(format!("bridge {name} vanished")))?;
        let res = async {
            if let Err(e) = self
                .h
                .address()
                .add(idx, IpAddr::V4(gateway), subnet.len)
                .execute()
                .await
            {
                if errno(&e) != EEXIST {
                    return Err(nl(
                        &format!("address {gateway}/{} on {name}", subnet.len),
                        e,
                    ));
                }
            }
            self.h
                .link()
                .set(LinkUnspec::new_with_index(idx).up().build())
                .execute()
                .await
                .map_err(|e| nl(&format!("set {name} up"), e))
        }
        .await;
        if let Err(e) = res {
            if created {
                let _ = self.delete(name).await;
            }
            return Err(e);
        }
        Ok(created)
    }

    /// Deletes link `name`; a missing link is fine.
    pub async fn delete(&self, name: &str) -> Result<(), NetError> {
        let Some(idx) = self.index(name).await? else {
            return Ok(());
        };
        match self.h.clone().link().del(idx).execute().await {
            Ok(()) => Ok(()),
            Err(e) if errno(&e) == ENODEV => Ok(()),
            Err(e) => Err(nl(&format!("delete link {name}"), e)),
        }
    }

    /// The IPv4 networks in use on the host: its addresses' subnets and its
    /// routes (the default route excluded).
    pub async fn used_subnets(&self) -> Result<Vec<Subnet>, NetError> {
        let mut out = Vec::new();
        let mut addrs = self.h.address().get().execute();
        while let Some(m) = addrs
            .try_next()
            .await
            .map_err(|e| nl("list addresses", e))?
        {
            for a in &m.attributes {
                if let AddressAttribute::Address(IpAddr::V4(ip)) = a {
                    out.push(Subnet::new(*ip, m.header.prefix_len));
                }
            }
        }
        let mut routes = self
            .h
            .route()
            .get(RouteMessageBuilder::<Ipv4Addr>::new().build())
            .execute();
        while let Some(m) = routes.try_next().await.map_err(|e| nl("list routes", e))? {
            let len = m.header.destination_prefix_length;
            if len == 0 {
                continue;
            }
            for a in &m.attributes {
                if let RouteAttribute::Destination(RouteAddress::Inet(ip)) = a {
                    out.push(Subnet::new(*ip, len));
                }
            }
        }
        Ok(out)
    }

    /// The MTU of the interface of the host's IPv4 default route (1500
    /// without one).
    pub async fn default_mtu(&self) -> u32 {
        let mut oif = None;
        let mut routes = self
            .h
            .route()
            .get(RouteMessageBuilder::<Ipv4Addr>::new().build())
            .execute();
        while let Ok(Some(m)) = routes.try_next().await {
            if m.header.destination_prefix_length == 0 && m.header.table == 254 {
                for a in &m.attributes {
                    if let RouteAttribute::Oif(i) = a {
                        oif = Some(*i);
                    }
                }
            }
        }
        let Some(oif) = oif else { return 1500 };
        let mut links = self.h.link().get().match_index(oif).execute();
        if let Ok(Some(m)) = links.try_next().await {
            for a in &m.attributes {
                if let LinkAttribute::Mtu(mtu) = a {
                    return *mtu;
                }
            }
        }
        1500
    }

    /// Creates veth pair `host`/`peer`, attaches `host` to bridge `bridge`
    /// (up, `mtu`) and moves `peer` into the namespace at `netns`. On
    /// failure nothing is left behind.
    pub async fn veth_into(
        &self,
        host: &str,
        peer: &str,
        bridge: &str,
        mtu: u32,
        netns: &std::fs::File,
    ) -> Result<(), NetError> {
        let br = self
            .index(bridge)
            .await?
            .ok_or_else(|| NetError::Netlink(format!("bridge {bridge} does not exist")))?;
        self.h
            .link()
            .add(LinkVeth::new(host, peer).mtu(mtu).build())
            .execute()
            .await
            .map_err(|e| nl(&format!("create veth {host}"), e))?;
        let res = async {
            let hidx = self
                .index(host)
                .await?
                .ok_or_else(|| NetError::Netlink(format!("veth {host} vanished")))?;
            let pidx = self
                .index(peer)
                .await?
                .ok_or_else(|| NetError::Netlink(format!("veth {peer} vanished")))?;
            self.h
                .link()
                .set(LinkUnspec::new_with_index(pidx).mtu(mtu).build())
                .execute()
                .await
                .map_err(|e| nl(&format!("set mtu of {peer}"), e))?;
            self.h
                .link()
                .set(LinkUnspec::new_with_index(hidx).controller(br).up().build())
                .execute()
                .await
                .map_err(|e| nl(&format!("attach {host} to {bridge}"), e))?;
            self.h
                .link()
                .set(
                    LinkUnspec::new_with_index(pidx)
                        .setns_by_fd(netns.as_raw_fd())
                        .build(),
                )
                .execute()
                .await
                .map_err(|e| nl(&format!("move {peer} into the container"), e))
        }
        .await;
        if let Err(e) = res {
            let _ = self.delete(host).await;
            return Err(e);
        }
        Ok(())
    }
}

/// What to configure on the container side of a veth.
#[derive(Debug, Clone)]
pub struct Inside {
    pub tmp_name: String,
    pub ifname: String,
    pub mac: [u8; 6],
    pub ip: Ipv4Addr,
    pub prefix: u8,
    /// Set for the interface that carries the default route.
    pub gateway: Option<Ipv4Addr>,
}

/// Renames, addresses and brings up the container's interface (and `lo`),
/// and adds the default route, from a thread inside namespace `netns`.
pub async fn configure_inside(netns: std::fs::File, cfg: Inside) -> Result<(), NetError> {
    let (tx, rx) = tokio::sync::oneshot::channel();
    std::thread::Builder::new()
        .name("orcad-netns".into())
        .spawn(move || {
            let _ = tx.send(inside_thread(netns, cfg));
        })
        .map_err(|e| NetError::Netlink(format!("cannot spawn a netns thread: {e}")))?;
    rx.await
        .map_err(|_| NetError::Netlink("the netns thread died".into()))?
}

fn inside_thread(netns: std::fs::File, cfg: Inside) -> Result<(), NetError> {
    // This thread enters the container's network namespace for good and
    // ends with this function: no other work ever runs on it.
    nix::sched::setns(&netns, nix::sched::CloneFlags::CLONE_NEWNET)
        .map_err(|e| NetError::Netlink(format!("setns into the container's netns: {e}")))?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| NetError::Netlink(format!("netns runtime: {e}")))?;
    rt.block_on(async move {
        let host = Host::connect()?;
        let h = &host.h;
        if let Some(lo) = host.index("lo").await? {
            h.link()
                .set(LinkUnspec::new_with_index(lo).up().build())
                .execute()
                .await
                .map_err(|e| nl("set lo up", e))?;
        }
        let idx = host.index(&cfg.tmp_name).await?.ok_or_else(|| {
            NetError::Netlink(format!("{} is not in the container", cfg.tmp_name))
        })?;
        h.link()
            .set(
                LinkUnspec::new_with_index(idx)
                    .name(cfg.ifname.clone())
                    .address(cfg.mac.to_vec())
                    .build(),
            )
            .execute()
            .await
            .map_err(|e| nl(&format!("rename to {}", cfg.ifname), e))?;
        h.address()
            .add(idx, IpAddr::V4(cfg.ip), cfg.prefix)
            .execute()
            .await
            .map_err(|e| nl(&format!("address {}/{}", cfg.ip, cfg.prefix), e))?;
        h.link()
            .set(LinkUnspec::new_with_index(idx).up().build())
            .execute()
            .await
            .map_err(|e| nl(&format!("set {} up", cfg.ifname), e))?;
        if let Some(gw) = cfg.gateway {
            h.route()
                .add(
                    RouteMessageBuilder::<Ipv4Addr>::new()
                        .gateway(gw)
                        .output_interface(idx)
                        .build(),
                )
                .execute()
                .await
                .map_err(|e| nl(&format!("default route via {gw}"), e))?;
        }
        Ok(())
    })
}

/// Removes interface `ifname` from namespace `netns` (disconnect of a
/// running container; deleting one end removes the pair).
pub async fn delete_inside(netns: std::fs::File, ifname: String) -> Result<(), NetError> {
    let (tx, rx) = tokio::sync::oneshot::channel();
    std::thread::Builder::new()
        .name("orcad-netns".into())
        .spawn(move || {
            let r = (|| {
                nix::sched::setns(&netns, nix::sched::CloneFlags::CLONE_NEWNET)
                    .map_err(|e| NetError::Netlink(format!("setns: {e}")))?;
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .map_err(|e| NetError::Netlink(format!("netns runtime: {e}")))?;
                rt.block_on(async { Host::connect()?.delete(&ifname).await })
            })();
            let _ = tx.send(r);
        })
        .map_err(|e| NetError::Netlink(format!("cannot spawn a netns thread: {e}")))?;
    rx.await
        .map_err(|_| NetError::Netlink("the netns thread died".into()))?
}
