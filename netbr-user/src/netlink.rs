//! A typed layer over rtnetlink: command code asks for links, addresses and
//! routes by what they are, and never builds a netlink message itself.
//!
//! A `Netlink` talks to the network namespace its socket was opened in, so
//! open it after entering the namespace you mean.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use anyhow::{anyhow, Context as _, Result};
use futures::{StreamExt as _, TryStreamExt as _};
use rtnetlink::{
    packet_core::{
        NetlinkMessage, NetlinkPayload, NLM_F_ACK, NLM_F_CREATE, NLM_F_REPLACE, NLM_F_REQUEST,
    },
    packet_route::{
        address::{AddressAttribute, AddressFlags, AddressScope},
        link::{
            InfoBridgePort, InfoKind, InfoPortData, InfoPortKind, LinkAttribute, LinkInfo,
            LinkMessage,
        },
    },
    packet_route::{
        tc::{TcAttribute, TcHandle, TcMessage, TcOption},
        RouteNetlinkMessage,
    },
    packet_utils::nla::DefaultNla,
    Handle, LinkBridge, LinkUnspec, LinkVeth, RouteMessageBuilder,
};

/// What netbr needs to know about a network interface.
#[derive(Clone, Debug)]
pub struct Link {
    pub index: u32,
    pub name: String,
    pub master: Option<u32>,
    pub mac: Option<[u8; 6]>,
    pub is_bridge: bool,
    pub is_veth: bool,
    pub mtu: u32,
    /// What the kernel counted on the interface (`IFLA_STATS64`).
    pub stats: LinkStats,
    /// A veth's peer in another namespace: that namespace's id as seen
    /// from this one (`IFLA_LINK_NETNSID`) and the peer's index there.
    pub peer: Option<(i32, u32)>,
}

/// A link's traffic as the kernel counts it, from the link's own side:
/// `rx` is what it received, `tx` what it sent.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LinkStats {
    pub rx_bytes: u64,
    pub rx_packets: u64,
    pub tx_bytes: u64,
    pub tx_packets: u64,
}

/// An IPv4 address with its prefix, on an interface.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Addr4 {
    pub index: u32,
    pub addr: Ipv4Addr,
    pub prefix: u8,
}

pub struct Netlink {
    handle: Handle,
}

/// Runs an async netlink job on a private single-threaded runtime: for code
/// running on threads of its own (inside another namespace, or in tests).
pub fn block_on<T>(f: impl std::future::Future<Output = Result<T>>) -> Result<T> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting a tokio runtime")?
        .block_on(f)
}

/// The kernel's errno behind a failed request, if it was one.
pub fn errno(err: &anyhow::Error) -> Option<i32> {
    err.chain()
        .find_map(|e| match e.downcast_ref::<rtnetlink::Error>() {
            Some(rtnetlink::Error::NetlinkError(m)) => m.code.map(|c| -c.get()),
            _ => None,
        })
}

impl Netlink {
    /// Opens a socket in the calling thread's namespace; must run inside a
    /// tokio runtime, which drives the connection.
    pub fn connect() -> Result<Self> {
        let (conn, handle, _) = rtnetlink::new_connection().context("opening a netlink socket")?;
        tokio::spawn(conn);
        Ok(Self { handle })
    }

    /// Opens a socket in the namespace at `ns`.
    pub fn connect_in(ns: &std::path::Path) -> Result<Self> {
        let _in = crate::netns::NetnsGuard::enter(ns)?;
        Self::connect()
    }

    pub async fn links(&self) -> Result<Vec<Link>> {
        let mut stream = self.handle.link().get().execute();
        let mut out = Vec::new();
        while let Some(msg) = stream.try_next().await.context("listing links")? {
            out.push(link_from(&msg));
        }
        Ok(out)
    }

    pub async fn link(&self, name: &str) -> Result<Option<Link>> {
        Ok(self.links().await?.into_iter().find(|l| l.name == name))
    }

    /// The link at `index` in the namespace this one knows as `netnsid`
    /// (`IFLA_TARGET_NETNSID`): a veth peer's, read without entering its
    /// namespace.
    pub async fn link_in(&self, netnsid: i32, index: u32) -> Result<Option<Link>> {
        let mut req = self.handle.link().get().match_index(index);
        req.message_mut()
            .attributes
            .push(LinkAttribute::IfNetnsId(netnsid));
        let mut stream = req.execute();
        match stream.try_next().await {
            Ok(msg) => Ok(msg.as_ref().map(link_from)),
            // The peer or its namespace is gone.
            Err(rtnetlink::Error::NetlinkError(_)) => Ok(None),
            Err(e) => Err(anyhow::Error::from(e).context("reading a veth peer")),
        }
    }

    pub async fn link_by_index(&self, index: u32) -> Result<Option<Link>> {
        Ok(self.links().await?.into_iter().find(|l| l.index == index))
    }

    pub async fn require_link(&self, name: &str) -> Result<Link> {
        self.link(name)
            .await?
            .ok_or_else(|| anyhow!("interface {name} not found"))
    }

    /// IPv4 addresses, of one interface or of all.
    pub async fn addrs(&self, index: Option<u32>) -> Result<Vec<Addr4>> {
        let mut req = self.handle.address().get();
        if let Some(i) = index {
            req = req.set_link_index_filter(i);
        }
        let mut stream = req.execute();
        let mut out = Vec::new();
        while let Some(msg) = stream.try_next().await.context("listing addresses")? {
            for attr in &msg.attributes {
                if let AddressAttribute::Address(IpAddr::V4(a)) = attr {
                    out.push(Addr4 {
                        index: msg.header.index,
                        addr: *a,
                        prefix: msg.header.prefix_len,
                    });
                }
            }
        }
        Ok(out)
    }

    pub async fn create_bridge(&self, name: &str) -> Result<Link> {
        self.handle
            .link()
            .add(LinkBridge::new(name).build())
            .execute()
            .await
            .with_context(|| format!("creating bridge {name}"))?;
        self.require_link(name).await
    }

    pub async fn create_veth(&self, name: &str, peer: &str) -> Result<()> {
        self.handle
            .link()
            .add(LinkVeth::new(name, peer).build())
            .execute()
            .await
            .with_context(|| format!("creating veth pair {name}/{peer}"))
    }

    pub async fn add_addr(&self, index: u32, addr: Ipv4Addr, prefix: u8) -> Result<()> {
        self.handle
            .address()
            .add(index, addr.into(), prefix)
            .execute()
            .await
            .with_context(|| format!("adding address {addr}/{prefix}"))
    }

    /// Adds an IPv6 address without duplicate address detection, as Docker
    /// and the CNI bridge plugin add containers' addresses: netbr hands
    /// out each address once, and an address tentative for a second after
    /// a container starts would fail its first connections.
    pub async fn add_addr6(&self, index: u32, addr: Ipv6Addr, prefix: u8) -> Result<()> {
        let mut req = self.handle.address().add(index, addr.into(), prefix);
        req.message_mut()
            .attributes
            .push(AddressAttribute::Flags(AddressFlags::Nodad));
        req.execute()
            .await
            .with_context(|| format!("adding address {addr}/{prefix}"))
    }

    /// The IPv6 addresses of global scope on link `index`.
    pub async fn addrs6(&self, index: u32) -> Result<Vec<(Ipv6Addr, u8)>> {
        let mut stream = self
            .handle
            .address()
            .get()
            .set_link_index_filter(index)
            .execute();
        let mut out = Vec::new();
        while let Some(msg) = stream.try_next().await.context("listing addresses")? {
            if msg.header.scope != AddressScope::Universe {
                continue;
            }
            for attr in &msg.attributes {
                if let AddressAttribute::Address(IpAddr::V6(a)) = attr {
                    out.push((*a, msg.header.prefix_len));
                }
            }
        }
        Ok(out)
    }

    async fn set(&self, msg: LinkMessage, what: &str) -> Result<()> {
        self.handle
            .link()
            .set(msg)
            .execute()
            .await
            .with_context(|| what.to_string())
    }

    pub async fn set_up(&self, index: u32) -> Result<()> {
        self.set(
            LinkUnspec::new_with_index(index).up().build(),
            "setting link up",
        )
        .await
    }

    pub async fn set_mtu(&self, index: u32, mtu: u32) -> Result<()> {
        self.set(
            LinkUnspec::new_with_index(index).mtu(mtu).build(),
            &format!("setting MTU {mtu}"),
        )
        .await
    }

    /// Sets a link's MAC. On a bridge this also stops the kernel from
    /// taking the lowest MAC of its ports as the bridge's own.
    pub async fn set_mac(&self, index: u32, mac: [u8; 6]) -> Result<()> {
        self.set(
            LinkUnspec::new_with_index(index)
                .address(mac.to_vec())
                .build(),
            "setting the MAC address",
        )
        .await
    }

    pub async fn set_master(&self, index: u32, master: u32) -> Result<()> {
        self.set(
            LinkUnspec::new_with_index(index).controller(master).build(),
            "enslaving link to the bridge",
        )
        .await
    }

    /// Isolates a bridge port: isolated ports cannot talk to each other,
    /// only to non-isolated ones (the bridge device itself). That is
    /// inter-container isolation at L2, without netfilter.
    pub async fn set_port_isolated(&self, index: u32, isolated: bool) -> Result<()> {
        let msg = LinkUnspec::new_with_index(index)
            .set_port_kind(InfoPortKind::Bridge)
            .set_port_data(InfoPortData::BridgePort(vec![InfoBridgePort::Isolated(
                isolated,
            )]))
            .build();
        self.handle
            .link()
            .set_port(msg)
            .execute()
            .await
            .context("setting bridge port isolation")
    }

    pub async fn move_to_netns(&self, index: u32, netns: &std::fs::File) -> Result<()> {
        use std::os::fd::AsRawFd as _;
        self.set(
            LinkUnspec::new_with_index(index)
                .setns_by_fd(netns.as_raw_fd())
                .build(),
            "moving link into the container namespace",
        )
        .await
    }

    pub async fn rename(&self, index: u32, name: &str) -> Result<()> {
        self.set(
            LinkUnspec::new_with_index(index)
                .name(name.to_string())
                .build(),
            "renaming link",
        )
        .await
    }

    /// Adds the default route of `gateway`'s family via it.
    pub async fn add_default_route(&self, gateway: impl Into<IpAddr>) -> Result<()> {
        let gateway = gateway.into();
        let route = RouteMessageBuilder::<IpAddr>::new()
            .gateway(gateway)
            .map_err(|e| anyhow!("a route via {gateway}: {e:?}"))?
            .build();
        self.handle
            .route()
            .add(route)
            .execute()
            .await
            .with_context(|| format!("adding default route via {gateway}"))
    }

    /// The gateway of the namespace's IPv4 default route, if it has one.
    pub async fn default_gateway(&self) -> Result<Option<Ipv4Addr>> {
        use rtnetlink::packet_route::route::{RouteAddress, RouteAttribute};
        let mut routes = self
            .handle
            .route()
            .get(RouteMessageBuilder::<Ipv4Addr>::new().build())
            .execute();
        while let Some(r) = routes.try_next().await.context("listing routes")? {
            if r.header.destination_prefix_length != 0 {
                continue;
            }
            for a in &r.attributes {
                if let RouteAttribute::Gateway(RouteAddress::Inet(gw)) = a {
                    return Ok(Some(*gw));
                }
            }
        }
        Ok(None)
    }

    pub async fn del_link(&self, index: u32) -> Result<()> {
        let mut links = self.handle.link();
        links.del(index).execute().await.context("deleting link")
    }

    /// Makes `fq` the interface's root qdisc (replacing whatever was
    /// there): it holds each packet until the departure time in its
    /// `tstamp`. Its per-flow limit is raised from 100 packets so that the
    /// datapath's horizon, not `fq`, decides when a limited endpoint's
    /// backlog is full.
    /// Returns `false`, changing nothing, when the kernel has no `fq`
    /// (built without `CONFIG_NET_SCH_FQ`).
    pub async fn set_fq_root(&self, index: u32) -> Result<bool> {
        let mut msg = TcMessage::with_index(index as i32);
        msg.header.parent = TcHandle::ROOT;
        msg.attributes.push(TcAttribute::Kind("fq".into()));
        msg.attributes
            .push(TcAttribute::Options(vec![TcOption::Other(
                DefaultNla::new(TCA_FQ_FLOW_PLIMIT, FQ_FLOW_PACKETS.to_ne_bytes().to_vec()),
            )]));
        let mut req = NetlinkMessage::from(RouteNetlinkMessage::NewQueueDiscipline(msg));
        req.header.flags = NLM_F_REQUEST | NLM_F_ACK | NLM_F_CREATE | NLM_F_REPLACE;
        match self.ack(req).await {
            Ok(()) => Ok(true),
            // "Specified qdisc kind is unknown"
            Err(e) if errno(&e) == Some(libc::ENOENT) => Ok(false),
            Err(e) => Err(e.context(format!("setting fq as the root qdisc of interface {index}"))),
        }
    }

    /// The kind of the interface's root qdisc (`noqueue` for a veth's
    /// default), if it has one.
    pub async fn root_qdisc(&self, index: u32) -> Result<Option<String>> {
        let mut qdiscs = self.handle.qdisc().get().index(index as i32).execute();
        while let Some(q) = qdiscs.try_next().await.context("listing qdiscs")? {
            if q.header.index != index as i32 || q.header.parent != TcHandle::ROOT {
                continue;
            }
            return Ok(q.attributes.iter().find_map(|a| match a {
                TcAttribute::Kind(k) => Some(k.clone()),
                _ => None,
            }));
        }
        Ok(None)
    }

    /// Removes the interface's root qdisc, which returns a veth to its
    /// default (`noqueue`). None there is not an error.
    pub async fn clear_root_qdisc(&self, index: u32) -> Result<()> {
        let mut req = self.handle.qdisc().del(index as i32);
        req.message_mut().header.parent = TcHandle::ROOT;
        match req.execute().await {
            Err(rtnetlink::Error::NetlinkError(m))
                if m.code
                    .is_some_and(|c| -c.get() == libc::ENOENT || -c.get() == libc::EINVAL) =>
            {
                Ok(())
            }
            r => r.with_context(|| format!("removing the root qdisc of interface {index}")),
        }
    }

    /// Sends a request and waits for the kernel's acknowledgement.
    async fn ack(&self, req: NetlinkMessage<RouteNetlinkMessage>) -> Result<()> {
        let mut handle = self.handle.clone();
        let mut responses = handle.request(req)?;
        while let Some(msg) = responses.next().await {
            if let NetlinkPayload::Error(e) = msg.payload {
                return Err(rtnetlink::Error::NetlinkError(e).into());
            }
        }
        Ok(())
    }
}

/// `TCA_FQ_FLOW_PLIMIT` (include/uapi/linux/pkt_sched.h).
const TCA_FQ_FLOW_PLIMIT: u16 = 2;
/// Per-flow packet limit of the `fq` netbr installs: more than a 10 ms
/// horizon holds at 1 Gbit/s in full-sized packets.
const FQ_FLOW_PACKETS: u32 = 2000;

fn link_from(msg: &LinkMessage) -> Link {
    let mut link = Link {
        index: msg.header.index,
        name: String::new(),
        master: None,
        mac: None,
        is_bridge: false,
        is_veth: false,
        mtu: 0,
        stats: LinkStats::default(),
        peer: None,
    };
    let (mut netnsid, mut peer_index) = (None, None);
    for attr in &msg.attributes {
        match attr {
            LinkAttribute::IfName(n) => link.name = n.clone(),
            LinkAttribute::Controller(m) => link.master = Some(*m),
            LinkAttribute::Mtu(m) => link.mtu = *m,
            LinkAttribute::LinkNetNsId(id) => netnsid = Some(*id),
            LinkAttribute::Link(i) => peer_index = Some(*i),
            LinkAttribute::Stats64(s) => {
                link.stats = LinkStats {
                    rx_bytes: s.rx_bytes,
                    rx_packets: s.rx_packets,
                    tx_bytes: s.tx_bytes,
                    tx_packets: s.tx_packets,
                }
            }
            LinkAttribute::Address(a) if a.len() == 6 => {
                let mut mac = [0; 6];
                mac.copy_from_slice(a);
                link.mac = Some(mac);
            }
            LinkAttribute::LinkInfo(infos) => {
                let kind = |k: InfoKind| infos.iter().any(|i| *i == LinkInfo::Kind(k.clone()));
                link.is_bridge = kind(InfoKind::Bridge);
                link.is_veth = kind(InfoKind::Veth);
            }
            _ => {}
        }
    }
    if let (Some(id), Some(i)) = (netnsid, peer_index) {
        link.peer = Some((id, i));
    }
    link
}
