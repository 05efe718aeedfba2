//! `netbr bench --rules N,...`: connect/close through DNAT while N firewall
//! rules are installed, none of which matches the measured traffic, so
//! every new flow is looked up against all of them and passes. netbr's
//! arms get `netbr firewall` denies by client address on the published
//! port; the iptables arms the same rules in Docker's DOCKER-USER chain
//! (which Docker jumps to first in FORWARD, for every forwarded packet);
//! the nftables arm one set of (client address, port) pairs.

use std::fmt::Write as _;

use anyhow::{Context as _, Result};

use super::arms::{self, Arm, Setup, TCP_PUBLISHED};
use crate::{
    sandbox::BRIDGE,
    store::{firewall::RuleRequest, Store},
};

/// Client address `i`: from 10.0.0.0/8, where no bench client lives.
fn client(i: u32) -> std::net::Ipv4Addr {
    std::net::Ipv4Addr::from(0x0a00_0000 | (i & 0x00ff_ffff))
}

/// Installs `n` rules in the arm's sandbox.
pub fn install(s: &Setup, n: u32) -> Result<()> {
    if n == 0 {
        return Ok(());
    }
    match s.arm {
        Arm::Routed => Ok(()),
        a if a.is_netbr() => {
            let reqs: Vec<_> = (0..n)
                .map(|i| RuleRequest {
                    allow: false,
                    out: false,
                    from: Some((client(i), 32)),
                    to: None,
                    port: Some((netbr_common::IPPROTO_TCP, TCP_PUBLISHED)),
                    endpoint: None,
                })
                .collect();
            crate::netns::run_in(&s.sb.host_path(), move || {
                Store::open(BRIDGE)?.add_rules(&reqs).map(drop)
            })?
            .context("adding netbr firewall rules")
        }
        Arm::Nftables => {
            let elements: Vec<String> = (0..n)
                .map(|i| format!("{} . {TCP_PUBLISHED}", client(i)))
                .collect();
            let text = format!(
                "table ip netbr_bench_fw {{\n\
                 set deny {{ type ipv4_addr . inet_service; elements = {{ {} }} }}\n\
                 chain forward {{ type filter hook forward priority filter - 1; meta l4proto tcp ip saddr . ct original proto-dst @deny drop; }}\n\
                 }}\n",
                elements.join(", ")
            );
            arms::run(&s.sb, "nft", &["-f", "-"], Some(&text)).context("adding the nftables set")
        }
        arm => {
            let mut text =
                String::from("*filter\n:DOCKER-USER - [0:0]\n-I FORWARD -j DOCKER-USER\n");
            for i in 0..n {
                let _ = writeln!(
                    text,
                    "-A DOCKER-USER -s {}/32 -p tcp -m conntrack --ctorigdstport {TCP_PUBLISHED} -j DROP",
                    client(i)
                );
            }
            text.push_str("COMMIT\n");
            let restore = if arm == Arm::IptablesLegacy {
                "iptables-legacy-restore"
            } else {
                "iptables-nft-restore"
            };
            arms::run(&s.sb, restore, &["--noflush"], Some(&text))
                .context("adding DOCKER-USER rules")
        }
    }
}

/// Removes what [`install`] added.
pub fn clear(s: &Setup, n: u32) -> Result<()> {
    if n == 0 {
        return Ok(());
    }
    match s.arm {
        Arm::Routed => Ok(()),
        a if a.is_netbr() => crate::netns::run_in(&s.sb.host_path(), || {
            Store::open(BRIDGE)?.remove_all_rules().map(drop)
        })?,
        Arm::Nftables => arms::run(
            &s.sb,
            "nft",
            &["delete", "table", "ip", "netbr_bench_fw"],
            None,
        ),
        arm => {
            let tool = if arm == Arm::IptablesLegacy {
                "iptables-legacy"
            } else {
                "iptables-nft"
            };
            arms::run(&s.sb, tool, &["-D", "FORWARD", "-j", "DOCKER-USER"], None)?;
            arms::run(&s.sb, tool, &["-F", "DOCKER-USER"], None)?;
            arms::run(&s.sb, tool, &["-X", "DOCKER-USER"], None)
        }
    }
}
