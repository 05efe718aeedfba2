//! The arms of `netbr bench`: identical sandboxes that differ only in what
//! carries traffic from lan to the published port.

use std::{fmt::Write as _, net::SocketAddr};

use anyhow::{bail, Context as _, Result};

use crate::sandbox::{in_netns, Sandbox, UPLINK_IP};

/// Container port behind every measured mapping, and the published ports.
pub const TCP_PORT: u16 = 80;
pub const UDP_PORT: u16 = 53;
pub const TCP_PUBLISHED: u16 = 8080;
pub const UDP_PUBLISHED: u16 = 5353;
/// iperf3's port, published as itself.
pub const STREAM_PORT: u16 = 5201;
/// Extra mappings (for `--ports`) start here, ahead of the measured one.
const FILLER_BASE: u16 = 20000;
const CONTAINER: std::net::Ipv4Addr = std::net::Ipv4Addr::new(172, 30, 0, 2);

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
/// last, where iptables evaluates it last).
/// netbr's arms get `ct_max` conntrack entries per table.
pub fn setup(arm: Arm, netbr: &std::path::Path, ports: u16, ct_max: u32) -> Result<Setup> {
    let sb = Sandbox::create(netbr)?;
    crate::netns::run_in(&sb.lan_path(), tune_client)??;
    match arm {
        Arm::Netbr | Arm::NetbrFast | Arm::NetbrXdp => {
            let ct_max = ct_max.to_string();
            let mut extra = vec!["--ct-max", &ct_max];
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
            sb.attach()?;
            sb.add_container(1)?;
            sb.netbr_ok(&["detach", "--keep-bridge"])?;
            match arm {
                Arm::Routed => {
                    let o = in_netns(
                        &sb.lan_path(),
                        "ip",
                        &["route", "add", "172.30.0.0/16", "via", "192.0.2.1"],
                    )?;
                    if !o.status.success() {
                        bail!("adding lan's route: {}", String::from_utf8_lossy(&o.stderr));
                    }
                }
                Arm::IptablesNft => {
                    run(&sb, "iptables-nft-restore", &[], Some(&docker_rules(ports)))?
                }
                Arm::IptablesLegacy => run(
                    &sb,
                    "iptables-legacy-restore",
                    &[],
                    Some(&docker_rules(ports)),
                )?,
                Arm::Nftables => run(&sb, "nft", &["-f", "-"], Some(&nft_rules(ports)))?,
                Arm::Netbr | Arm::NetbrFast | Arm::NetbrXdp => unreachable!(),
            }
        }
    }
    // The container is a client too, through masquerade.
    crate::netns::run_in(&sb.container_path(1), tune_client)??;
    let (tcp, udp, stream) = if arm == Arm::Routed {
        (
            SocketAddr::from((CONTAINER, TCP_PORT)),
            SocketAddr::from((CONTAINER, UDP_PORT)),
            SocketAddr::from((CONTAINER, STREAM_PORT)),
        )
    } else {
        (
            SocketAddr::from((UPLINK_IP, TCP_PUBLISHED)),
            SocketAddr::from((UPLINK_IP, UDP_PUBLISHED)),
            SocketAddr::from((UPLINK_IP, STREAM_PORT)),
        )
    };
    Ok(Setup {
        arm,
        sb,
        tcp,
        udp,
        stream,
    })
}

/// The nat and filter rules Docker 28 installs for a bridge `netbr0` with
/// one container, publishing `ports` TCP ports (fillers first) and one UDP.
fn docker_rules(ports: u16) -> String {
    let mut nat = String::from(
        "*nat\n:PREROUTING ACCEPT [0:0]\n:INPUT ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\n:POSTROUTING ACCEPT [0:0]\n:DOCKER - [0:0]\n\
         -A PREROUTING -m addrtype --dst-type LOCAL -j DOCKER\n\
         -A OUTPUT ! -d 127.0.0.0/8 -m addrtype --dst-type LOCAL -j DOCKER\n\
         -A POSTROUTING -s 172.30.0.0/16 ! -o netbr0 -j MASQUERADE\n\
         -A DOCKER -i netbr0 -j RETURN\n",
    );
    let mut filter = String::from(
        "*filter\n:INPUT ACCEPT [0:0]\n:FORWARD DROP [0:0]\n:OUTPUT ACCEPT [0:0]\n:DOCKER - [0:0]\n:DOCKER-FORWARD - [0:0]\n\
         -A FORWARD -j DOCKER-FORWARD\n\
         -A DOCKER-FORWARD -o netbr0 -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT\n\
         -A DOCKER-FORWARD -o netbr0 -j DOCKER\n\
         -A DOCKER-FORWARD -i netbr0 -j ACCEPT\n",
    );
    let mut publish = |proto: &str, host: u16, port: u16| {
        let _ = writeln!(
            nat,
            "-A DOCKER ! -i netbr0 -p {proto} -m {proto} --dport {host} -j DNAT --to-destination {CONTAINER}:{port}"
        );
        let _ = writeln!(
            filter,
            "-A DOCKER -d {CONTAINER}/32 ! -i netbr0 -o netbr0 -p {proto} -m {proto} --dport {port} -j ACCEPT"
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
/// nftables mode do, plus masquerade.
fn nft_rules(ports: u16) -> String {
    let mut tcp: Vec<String> = std::iter::once(STREAM_PORT)
        .chain((0..ports.saturating_sub(1)).map(|i| FILLER_BASE + i))
        .map(|p| format!("{p} : {CONTAINER} . {p}"))
        .collect();
    tcp.push(format!("{TCP_PUBLISHED} : {CONTAINER} . {TCP_PORT}"));
    format!(
        "table ip netbr_bench {{\n\
         map tcp_ports {{ type inet_service : ipv4_addr . inet_service; elements = {{ {} }} }}\n\
         map udp_ports {{ type inet_service : ipv4_addr . inet_service; elements = {{ {UDP_PUBLISHED} : {CONTAINER} . {UDP_PORT} }} }}\n\
         chain prerouting {{ type nat hook prerouting priority dstnat; fib daddr type local dnat ip to tcp dport map @tcp_ports; fib daddr type local dnat ip to udp dport map @udp_ports; }}\n\
         chain postrouting {{ type nat hook postrouting priority srcnat; ip saddr 172.30.0.0/16 oifname != \"netbr0\" masquerade; }}\n\
         }}\n",
        tcp.join(", ")
    )
}
