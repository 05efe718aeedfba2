//! A Kubernetes cluster's network shrunk to namespaces, for the tests and
//! the bench (harness, not product): node namespaces joined by a fabric
//! bridge, each node with its own pod subnet and host-gw routes to the
//! others', as a cluster with a route-based pod network has them.
//!
//! ```text
//! ns fabric   bridge fab0: one port per node and one for the outside
//! ns nodeN    eth0 192.0.2.(10+N)/24; pod subnet 172.30.N.0/24;
//!             route to every other node's pod subnet via that node,
//!             default route via the outside (a node's way out)
//! ns outside  eth0 192.0.2.2/24: a client beyond the cluster, which
//!             knows no pod subnet (it reaches pods through hostPorts)
//! ```
//!
//! Every name carries a unique suffix; dropping the cluster detaches netbr
//! on every node and deletes every namespace it made, also on a panic.

use std::{net::Ipv4Addr, path::PathBuf, process::Output};

use anyhow::{bail, Context as _, Result};
use serde_json::{json, Value};

use crate::{netlink, netns, sandbox};

/// The cluster's pod CIDR: every node's pod subnet lies inside it.
pub const CLUSTER_CIDR: &str = "172.30.0.0/16";
/// The outside client's address on the fabric.
pub const OUTSIDE_IP: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 2);
/// The node's interface on the fabric, and netbr's uplink there.
pub const NODE_UPLINK: &str = "eth0";

pub struct Node {
    /// The node's network namespace name.
    pub ns: String,
    /// Its address on the fabric.
    pub ip: Ipv4Addr,
    /// Its pod subnet, `172.30.N.0/24`.
    pub pod_subnet: String,
}

impl Node {
    pub fn path(&self) -> PathBuf {
        netns::resolve(&self.ns)
    }
}

pub struct Cluster {
    pub suffix: String,
    pub nodes: Vec<Node>,
    pub outside: String,
    fabric: String,
    netbr: PathBuf,
}

impl Cluster {
    /// `count` nodes (1 to 9) and the outside client on one fabric.
    /// `netbr` is the binary that detaches each node's bridge at the end.
    pub fn create(netbr: impl Into<PathBuf>, count: u8) -> Result<Self> {
        if !(1..=9).contains(&count) {
            bail!("a cluster has 1 to 9 nodes, not {count}");
        }
        let suffix = sandbox::unique_suffix();
        let cluster = Self {
            nodes: (1..=count)
                .map(|n| Node {
                    ns: format!("nbk{n}-{suffix}"),
                    ip: Ipv4Addr::new(192, 0, 2, 10 + n),
                    pod_subnet: format!("172.30.{n}.0/24"),
                })
                .collect(),
            outside: format!("nbko-{suffix}"),
            fabric: format!("nbkf-{suffix}"),
            suffix,
            netbr: netbr.into(),
        };
        // Each namespace is created before the next, so Drop removes
        // exactly those that exist whatever fails below.
        netns::create_named(&cluster.fabric)?;
        netns::create_named(&cluster.outside)?;
        for node in &cluster.nodes {
            netns::create_named(&node.ns)?;
        }
        cluster.wire().context("wiring the cluster")?;
        Ok(cluster)
    }

    pub fn outside_path(&self) -> PathBuf {
        netns::resolve(&self.outside)
    }

    fn wire(&self) -> Result<()> {
        let ports: Vec<(PathBuf, Ipv4Addr)> = std::iter::once((self.outside_path(), OUTSIDE_IP))
            .chain(self.nodes.iter().map(|n| (n.path(), n.ip)))
            .collect();
        let members = ports.clone();
        netns::run_in(&netns::resolve(&self.fabric), move || {
            netlink::block_on(async {
                let nl = netlink::Netlink::connect()?;
                let fab = nl.create_bridge("fab0").await?;
                for (i, (ns, _)) in members.iter().enumerate() {
                    let (port, peer) = (format!("p{i}"), format!("x{i}"));
                    nl.create_veth(&port, &peer).await?;
                    let port = nl.require_link(&port).await?;
                    nl.set_master(port.index, fab.index).await?;
                    nl.set_up(port.index).await?;
                    let peer = nl.require_link(&peer).await?;
                    nl.move_to_netns(peer.index, &netns::open(ns)?).await?;
                }
                nl.set_up(fab.index).await
            })
        })??;
        for (i, (ns, ip)) in ports.into_iter().enumerate() {
            netns::run_in(&ns, move || {
                netlink::block_on(async {
                    let nl = netlink::Netlink::connect()?;
                    let eth = nl.require_link(&format!("x{i}")).await?;
                    nl.rename(eth.index, NODE_UPLINK).await?;
                    nl.add_addr(eth.index, ip, 24).await?;
                    nl.set_up(eth.index).await
                })
            })??;
        }
        for node in &self.nodes {
            // A node forwards, as kubelet requires of it.
            netns::run_in(&node.path(), || {
                crate::sysctl::write("net.ipv4.ip_forward", "1")
            })??;
            let routes = self
                .nodes
                .iter()
                .filter(|o| o.ns != node.ns)
                .map(|o| (o.pod_subnet.clone(), o.ip))
                .chain([("default".to_string(), OUTSIDE_IP)]);
            for (to, via) in routes {
                let via = via.to_string();
                let args = ["route", "add", to.as_str(), "via", &via];
                let o = sandbox::in_netns(&node.path(), "ip", &args)?;
                if !o.status.success() {
                    bail!(
                        "ip route add in {}: {}",
                        node.ns,
                        String::from_utf8_lossy(&o.stderr).trim()
                    );
                }
            }
        }
        Ok(())
    }

    /// Runs `netbr --netns NODE ARGS...`.
    pub fn netbr(&self, node: &Node, args: &[&str]) -> Result<Output> {
        sandbox::timeout_command(&self.netbr)
            .arg("--netns")
            .arg(&node.ns)
            .args(args)
            .output()
            .with_context(|| format!("running {}", self.netbr.display()))
    }

    /// The CNI configuration of `netbr-cni` on `node`, with the keys a
    /// Kubernetes pod network needs: pods reach the cluster's pods and are
    /// reached by them with their own addresses; the rest masquerades.
    pub fn netbr_cni_conf(&self, node: &Node) -> Value {
        json!({
            "cniVersion": "1.0.0",
            "name": "k8s-pod-network",
            "type": "netbr-cni",
            "bridge": "netbr0",
            "subnet": node.pod_subnet,
            "uplink": NODE_UPLINK,
            "nonMasqueradeCIDRs": [CLUSTER_CIDR],
            "allowDirectRouting": true,
            "capabilities": {"portMappings": true, "bandwidth": true},
        })
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for node in &self.nodes {
            if netns::exists(&node.ns) {
                // Fails harmlessly where netbr was never attached.
                let _ = self.netbr(node, &["detach"]);
            }
        }
        let names = self.nodes.iter().map(|n| &n.ns);
        for ns in names.chain([&self.outside, &self.fabric]) {
            if netns::exists(ns) {
                if let Err(e) = netns::delete_named(ns) {
                    eprintln!("cluster cleanup: {e:#}");
                }
            }
        }
    }
}
