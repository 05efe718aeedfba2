//! The arms of `netbr bench`: identical sandboxes that differ only in what
//! carries traffic from lan to the published port.

use std::{
    fmt::Write as _,
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
};

use anyhow::{bail, Context as _, Result};

use crate::sandbox::{in_netns, Sandbox, LAN_IP, LAN_IP6, SUBNET, SUBNET6, UPLINK_IP, UPLINK_IP6};

/// Container port behind every measured mapping, and the published ports.
pub const TCP_PORT: u16 = 80;
pub const UDP_PORT: u16 = 53;
pub const TCP_PUBLISHED: u16 = 8080;
pub const UDP_PUBLISHED: u16 = 5353;
/// iperf3's port, published as itself.
pub const STREAM_PORT: u16 = 5201;
/// Extra mappings (for `--ports`) start here, ahead of the measured one.
const FILLER_BASE: u16 = 20000;

/// The address family a bench run measures: every arm's sandbox carries
/// both, and its clients and servers use this one.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Family {
    V4,
    V6,
}

impl Family {
    pub fn of(addr: SocketAddr) -> Self {
        if addr.is_ipv6() {
            Family::V6
        } else {
            Family::V4
        }
    }

    /// The measured container's address (endpoint 1, the subnet's second).
    pub fn container(self) -> IpAddr {
        match self {
            Family::V4 => Ipv4Addr::new(172, 30, 0, 2).into(),
            Family::V6 => Ipv6Addr::new(0xfd00, 0x30, 0, 0, 0, 0, 0, 2).into(),
        }
    }

    /// The host's address on lan's link: where published ports are reached.
    pub fn uplink(self) -> IpAddr {
        match self {
            Family::V4 => UPLINK_IP.into(),
            Family::V6 => UPLINK_IP6.into(),
        }
    }

    pub fn lan(self) -> IpAddr {
        match self {
            Family::V4 => LAN_IP.into(),
            Family::V6 => LAN_IP6.into(),
        }
    }

    /// Every address of this family, for servers' sockets.
    pub fn unspecified(self) -> IpAddr {
        match self {
            Family::V4 => Ipv4Addr::UNSPECIFIED.into(),
            Family::V6 => Ipv6Addr::UNSPECIFIED.into(),
        }
    }

    pub fn loopback(self) -> IpAddr {
        match self {
            Family::V4 => Ipv4Addr::LOCALHOST.into(),
            Family::V6 => Ipv6Addr::LOCALHOST.into(),
        }
    }

    fn subnet(self) -> &'static str {
        match self {
            Family::V4 => SUBNET,
            Family::V6 => SUBNET6,
        }
    }

    /// `ip`'s and nftables' name of the family.
    fn nft(self) -> &'static str {
        match self {
            Family::V4 => "ip",
            Family::V6 => "ip6",
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Arm {
    /// No NAT: lan routes the bridge subnet via the host. The floor.
    Routed,
    /// The rules Docker 28 installs, through iptables-nft.
    IptablesNft,
    /// The same rules through iptables-legacy.
    IptablesLegacy,
    /// DNAT through an nftables map, as netavark and kube-proxy do.
    Nftables,
    Netbr,
    /// netbr with `--fast-path`.
    NetbrFast,
    /// netbr with `--fast-path --xdp`. lan sends complete checksums, as a
    /// physical wire would: XDP cannot fix up partial ones (and lan loses
    /// TSO with them, which its TCP stream figure shows).
    NetbrXdp,
}

impl Arm {
    pub const ALL: [Arm; 7] = [
        Arm::Routed,
        Arm::IptablesNft,
        Arm::IptablesLegacy,
        Arm::Nftables,
        Arm::Netbr,
        Arm::NetbrFast,
        Arm::NetbrXdp,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Arm::Routed => "routed",
            Arm::IptablesNft => "iptables-nft",
            Arm::IptablesLegacy => "iptables-legacy",
            Arm::Nftables => "nftables",
            Arm::Netbr => "netbr",
            Arm::NetbrFast => "netbr-fast",
            Arm::NetbrXdp => "netbr-xdp",
        }
    }

    pub fn parse(s: &str) -> Result<Self> {
        Arm::ALL
            .into_iter()
            .find(|a| a.name() == s)
            .with_context(|| {
                let names: Vec<_> = Arm::ALL.iter().map(|a| a.name()).collect();
                format!("unknown arm {s:?}: pick from {}", names.join(", "))
            })
    }

    pub fn is_netbr(self) -> bool {
        matches!(self, Arm::Netbr | Arm::NetbrFast | Arm::NetbrXdp)
    }

    pub fn is_netfilter(self) -> bool {
        matches!(self, Arm::IptablesNft | Arm::IptablesLegacy | Arm::Nftables)
    }
}

/// A sandbox set up for one arm, and where its clients connect.
pub struct Setup {
    pub arm: Arm,
    pub family: Family,
    pub sb: Sandbox,
    pub tcp: SocketAddr,
    pub udp: SocketAddr,
    /// Where iperf3 connects.
    pub stream: SocketAddr,
}

/// Runs `cmd` in the sandbox's host namespace, `input` on its stdin.
pub fn run(sb: &Sandbox, cmd: &str, args: &[&str], input: Option<&str>) -> Result<()> {
    let out = match input {
        None => in_netns(&sb.host_path(), cmd, args)?,
        Some(text) => {
            use std::io::Write as _;
            let mut child = std::process::Command::new("nsenter")
                .arg(format!("--net={}", sb.host_path().display()))
                .arg(cmd)
                .args(args)
                .stdin(std::process::Stdio::piped())
                .stdout(std::process::Stdio::piped())
                .stderr(std::process::Stdio::piped())
                .spawn()
                .with_context(|| format!("running {cmd}"))?;
            child
                .stdin
                .take()
                .context("stdin")?
                .write_all(text.as_bytes())?;
            child.wait_with_output()?
        }
    };
    if !out.status.success() {
        bail!(
            "{cmd} {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

/// The connect/close clients open thousands of connections a second: let
/// their namespace reuse TIME_WAIT ports and use the whole ephemeral range.
fn tune_client() -> Result<()> {
    crate::sysctl::write("net.ipv4.tcp_tw_reuse", "1")?;
    crate::sysctl::write("net.ipv4.ip_local_port_range", "1024 65000")
}

/// Builds the arm's sandbox with `ports` published ports (the measured one
/// last, where iptables evaluates it last), dual-stack when measuring IPv6.
/// netbr's arms get `ct_max` conntrack entries per table.
pub fn setup(
    arm: Arm,
    family: Family,
    netbr: &std::path::Path,
    ports: u16,
    ct_max: u32,
) -> Result<Setup> {
    let sb = Sandbox::create(netbr)?;
    crate::netns::run_in(&sb.lan_path(), tune_client)??;
    let mut dual_stack = vec![];
    if family == Family::V6 {
        sb.ipv6_on_the_link()?;
        dual_stack = vec!["--subnet", SUBNET6];
    }
    match arm {
        Arm::Netbr | Arm::NetbrFast | Arm::NetbrXdp => {
            let ct_max = ct_max.to_string();
            let mut extra = dual_stack;
            extra.extend(["--ct-max", &ct_max]);
            extra.push(if arm == Arm::Netbr {
                "--no-fast-path"
            } else {
                "--fast-path"
            });
            if arm == Arm::NetbrXdp {
                extra.push("--xdp");
                crate::netns::run_in(&sb.lan_path(), || {
                    crate::ethtool::set_tx_checksum("eth0", false)
                })??;
            }
            sb.attach_with(&extra)?;
            sb.add_container(1)?;
            if ports > 1 {
                let end = FILLER_BASE + ports - 2;
                sb.publish(1, &[&format!("{FILLER_BASE}-{end}:{FILLER_BASE}-{end}")])?;
            }
            sb.publish(
                1,
                &[
                    &format!("{STREAM_PORT}:{STREAM_PORT}"),
                    &format!("{TCP_PUBLISHED}:{TCP_PORT}"),
                    &format!("{UDP_PUBLISHED}:{UDP_PORT}/udp"),
                ],
            )?;
        }
        _ => {
            // The same bridge and endpoint, with no netbr datapath left.
            sb.attach_with(&dual_stack)?;
            sb.add_container(1)?;
            sb.netbr_ok(&["detach", "--keep-bridge"])?;
            let restore = |tool: &str| {
                let tool = match family {
                    Family::V4 => format!("iptables-{tool}-restore"),
                    Family::V6 => format!("ip6tables-{tool}-restore"),
                };
                run(&sb, &tool, &[], Some(&docker_rules(family, ports)))
            };
            match arm {
                Arm::Routed => {
                    let via = family.uplink().to_string();
                    let o = in_netns(
                        &sb.lan_path(),
                        "ip",
                        &["route", "add", family.subnet(), "via", &via],
                    )?;
                    if !o.status.success() {
                        bail!("adding lan's route: {}", String::from_utf8_lossy(&o.stderr));
                    }
                }
                Arm::IptablesNft => restore("nft")?,
                Arm::IptablesLegacy => restore("legacy")?,
                Arm::Nftables => run(&sb, "nft", &["-f", "-"], Some(&nft_rules(family, ports)))?,
                Arm::Netbr | Arm::NetbrFast | Arm::NetbrXdp => unreachable!(),
            }
        }
    }
    // The container is a client too, through masquerade.
    crate::netns::run_in(&sb.container_path(1), tune_client)??;
    let (tcp, udp, stream) = if arm == Arm::Routed {
        let c = family.container();
        (
            SocketAddr::new(c, TCP_PORT),
            SocketAddr::new(c, UDP_PORT),
            SocketAddr::new(c, STREAM_PORT),
        )
    } else {
        let up = family.uplink();
        (
            SocketAddr::new(up, TCP_PUBLISHED),
            SocketAddr::new(up, UDP_PUBLISHED),
            SocketAddr::new(up, STREAM_PORT),
        )
    };
    Ok(Setup {
        arm,
        family,
        sb,
        tcp,
        udp,
        stream,
    })
}

/// The nat and filter rules Docker 28 installs for a bridge `netbr0` with
/// one container, publishing `ports` TCP ports (fillers first) and one UDP;
/// for IPv6 the same rules in ip6tables, as Docker installs them there.
fn docker_rules(family: Family, ports: u16) -> String {
    let (loopback, subnet, container) = match family {
        Family::V4 => ("127.0.0.0/8", SUBNET, family.container().to_string()),
        Family::V6 => ("::1/128", SUBNET6, format!("[{}]", family.container())),
    };
    let host_bits = if family == Family::V4 { 32 } else { 128 };
    let mut nat = format!(
        "*nat\n:PREROUTING ACCEPT [0:0]\n:INPUT ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\n:POSTROUTING ACCEPT [0:0]\n:DOCKER - [0:0]\n\
         -A PREROUTING -m addrtype --dst-type LOCAL -j DOCKER\n\
         -A OUTPUT ! -d {loopback} -m addrtype --dst-type LOCAL -j DOCKER\n\
         -A POSTROUTING -s {subnet} ! -o netbr0 -j MASQUERADE\n\
         -A DOCKER -i netbr0 -j RETURN\n",
    );
    let mut filter = String::from(
        "*filter\n:INPUT ACCEPT [0:0]\n:FORWARD DROP [0:0]\n:OUTPUT ACCEPT [0:0]\n:DOCKER - [0:0]\n:DOCKER-FORWARD - [0:0]\n\
         -A FORWARD -j DOCKER-FORWARD\n\
         -A DOCKER-FORWARD -o netbr0 -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT\n\
         -A DOCKER-FORWARD -o netbr0 -j DOCKER\n\
         -A DOCKER-FORWARD -i netbr0 -j ACCEPT\n",
    );
    let addr = family.container();
    let mut publish = |proto: &str, host: u16, port: u16| {
        let _ = writeln!(
            nat,
            "-A DOCKER ! -i netbr0 -p {proto} -m {proto} --dport {host} -j DNAT --to-destination {container}:{port}"
        );
        let _ = writeln!(
            filter,
            "-A DOCKER -d {addr}/{host_bits} ! -i netbr0 -o netbr0 -p {proto} -m {proto} --dport {port} -j ACCEPT"
        );
    };
    publish("tcp", STREAM_PORT, STREAM_PORT);
    for i in 0..ports.saturating_sub(1) {
        publish("tcp", FILLER_BASE + i, FILLER_BASE + i);
    }
    publish("tcp", TCP_PUBLISHED, TCP_PORT);
    publish("udp", UDP_PUBLISHED, UDP_PORT);
    format!("{nat}COMMIT\n{filter}COMMIT\n")
}

/// DNAT through one map lookup per protocol, as netavark and kube-proxy's
/// nftables mode do, plus masquerade. For IPv6, in an `inet` table as
/// netavark keeps both families.
fn nft_rules(family: Family, ports: u16) -> String {
    let container = family.container();
    let mut tcp: Vec<String> = std::iter::once(STREAM_PORT)
        .chain((0..ports.saturating_sub(1)).map(|i| FILLER_BASE + i))
        .map(|p| format!("{p} : {container} . {p}"))
        .collect();
    tcp.push(format!("{TCP_PUBLISHED} : {container} . {TCP_PORT}"));
    let (table, addr_type) = match family {
        Family::V4 => ("ip", "ipv4_addr"),
        Family::V6 => ("inet", "ipv6_addr"),
    };
    let (subnet, l3) = (family.subnet(), family.nft());
    format!(
        "table {table} netbr_bench {{\n\
         map tcp_ports {{ type inet_service : {addr_type} . inet_service; elements = {{ {} }} }}\n\
         map udp_ports {{ type inet_service : {addr_type} . inet_service; elements = {{ {UDP_PUBLISHED} : {container} . {UDP_PORT} }} }}\n\
         chain prerouting {{ type nat hook prerouting priority dstnat; fib daddr type local dnat {l3} to tcp dport map @tcp_ports; fib daddr type local dnat {l3} to udp dport map @udp_ports; }}\n\
         chain postrouting {{ type nat hook postrouting priority srcnat; {l3} saddr {subnet} oifname != \"netbr0\" masquerade; }}\n\
         }}\n",
        tcp.join(", ")
    )
}
