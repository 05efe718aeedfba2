//! `netbr bench --pods`: pod to pod across two nodes of a
//! [`Cluster`], the path Kubernetes' network model adds: netbr-cni as each
//! node's pod network (its Kubernetes keys: pod CIDR unmasqueraded, direct
//! routing allowed) against the reference `bridge` plugin with `host-local`
//! and `ipMasq` off, and against plain routing (a veth per pod, routed by
//! the node; no bridge, no BPF, no netfilter). One pod per node; the client
//! on node 1 measures against the server on node 2. Arms are interleaved
//! in rounds like the main bench's.

use std::{
    net::{Ipv4Addr, SocketAddr},
    path::{Path, PathBuf},
    time::Duration,
};

use anyhow::{bail, Context as _, Result};
use serde_json::{json, Value};

use super::{cni, load, stat};
use crate::{
    cluster::{Cluster, Node},
    netlink, netns,
};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PodArm {
    Routed,
    Reference,
    Netbr,
}

impl PodArm {
    pub const ALL: [PodArm; 3] = [PodArm::Routed, PodArm::Reference, PodArm::Netbr];

    pub fn name(self) -> &'static str {
        match self {
            PodArm::Routed => "routed",
            PodArm::Reference => "bridge+host-local",
            PodArm::Netbr => "netbr-cni",
        }
    }
}

/// Metric, and whether higher is better.
pub const METRICS: [(&str, bool); 4] = [
    ("tcp_stream_gbps", true),
    ("rr_per_s", true),
    ("rr_p50_us", false),
    ("rr_p99_us", false),
];

const STREAM_PORT: u16 = 5201;
const RR_PORT: u16 = 7000;

/// One arm's cluster with a pod on each node; the pods' namespaces go
/// before the cluster (whose drop detaches netbr and deletes the nodes).
struct Pods {
    pods: Vec<(String, Ipv4Addr)>,
    ipam_dir: PathBuf,
    cluster: Cluster,
}

impl Drop for Pods {
    fn drop(&mut self) {
        for (ns, _) in &self.pods {
            if netns::exists(ns) {
                let _ = netns::delete_named(ns);
            }
        }
        let _ = std::fs::remove_dir_all(&self.ipam_dir);
    }
}

impl Pods {
    fn create(arm: PodArm, netbr: &Path) -> Result<Self> {
        let cluster = Cluster::create(netbr, 2)?;
        let mut pods = Self {
            pods: Vec::new(),
            ipam_dir: std::env::temp_dir().join(format!("netbr-bench-pods-{}", cluster.suffix)),
            cluster,
        };
        for i in 0..2 {
            let ns = format!("nbkp{i}-{}", pods.cluster.suffix);
            netns::create_named(&ns)?;
            pods.pods.push((ns.clone(), Ipv4Addr::UNSPECIFIED));
            let node = &pods.cluster.nodes[i];
            let ip = match arm {
                PodArm::Routed => routed_pod(node, &ns, i)?,
                PodArm::Netbr | PodArm::Reference => {
                    let (plugin, conf) =
                        plugin_conf(arm, &pods.cluster, node, netbr, &pods.ipam_dir)?;
                    let pod_ns = netns::resolve(&ns);
                    let id = format!("benchpod{i}");
                    let result = netns::run_in(&node.path(), move || {
                        cni::exec(&plugin, "ADD", &conf, &id, &pod_ns)
                    })??;
                    result_ip(&result)?
                }
            };
            pods.pods[i].1 = ip;
        }
        Ok(pods)
    }

    fn path(&self, i: usize) -> PathBuf {
        netns::resolve(&self.pods[i].0)
    }

    fn addr(&self, i: usize, port: u16) -> SocketAddr {
        SocketAddr::from((self.pods[i].1, port))
    }
}

/// The plugin binary and its configuration for a CNI arm on `node`.
fn plugin_conf(
    arm: PodArm,
    cluster: &Cluster,
    node: &Node,
    netbr: &Path,
    ipam_dir: &Path,
) -> Result<(PathBuf, Value)> {
    let (plugin, conf) = match arm {
        PodArm::Netbr => (
            netbr
                .parent()
                .context("the netbr binary's directory")?
                .join("netbr-cni"),
            cluster.netbr_cni_conf(node),
        ),
        _ => (
            Path::new(cni::REFERENCE_DIR).join("bridge"),
            json!({
                "cniVersion": "1.0.0",
                "name": "k8s-pod-network",
                "type": "bridge",
                "bridge": "cni0",
                "isGateway": true,
                "ipMasq": false,
                "ipam": {
                    "type": "host-local",
                    "ranges": [[{"subnet": node.pod_subnet}]],
                    "routes": [{"dst": "0.0.0.0/0"}],
                    "dataDir": ipam_dir.join(&node.ns),
                },
            }),
        ),
    };
    if !plugin.exists() {
        bail!(
            "{} is missing: build netbr-cni (cargo build --release) and install containernetworking-plugins",
            plugin.display()
        );
    }
    Ok((plugin, conf))
}

fn result_ip(result: &Value) -> Result<Ipv4Addr> {
    let cidr = result["ips"][0]["address"]
        .as_str()
        .context("the plugin's result has no address")?;
    let ip = cidr.split('/').next().unwrap_or_default();
    ip.parse()
        .with_context(|| format!("the plugin's address {cidr:?}"))
}

/// Plain routing: the pod's veth peer on the node holds the gateway
/// address `172.30.N.1`, the pod `172.30.N.2` with a default route via it.
fn routed_pod(node: &Node, pod_ns: &str, i: usize) -> Result<Ipv4Addr> {
    let n = i as u8 + 1;
    let (gateway, ip) = (Ipv4Addr::new(172, 30, n, 1), Ipv4Addr::new(172, 30, n, 2));
    let pod_path = netns::resolve(pod_ns);
    netns::run_in(&node.path(), move || {
        netlink::block_on(async {
            let nl = netlink::Netlink::connect()?;
            nl.create_veth("vpod", "vpeer").await?;
            let host = nl.require_link("vpod").await?;
            nl.add_addr(host.index, gateway, 24).await?;
            nl.set_up(host.index).await?;
            let peer = nl.require_link("vpeer").await?;
            nl.move_to_netns(peer.index, &netns::open(&pod_path)?).await
        })
    })??;
    netns::run_in(&netns::resolve(pod_ns), move || {
        netlink::block_on(async {
            let nl = netlink::Netlink::connect()?;
            let eth = nl.require_link("vpeer").await?;
            nl.rename(eth.index, "eth0").await?;
            nl.add_addr(eth.index, ip, 24).await?;
            nl.set_up(eth.index).await?;
            nl.add_default_route(gateway).await
        })
    })??;
    Ok(ip)
}

/// One round of the metrics, from the pod on node 1 to the one on node 2.
fn measure(pods: &Pods, secs: f64) -> Result<Vec<f64>> {
    let client = pods.path(0);
    let gbps = load::tcp_stream(&client, pods.addr(1, STREAM_PORT), secs)?;
    let dur = Duration::from_secs_f64(secs);
    let (rate, p50, p99) = load::request_response(&client, pods.addr(1, RR_PORT), dur, 1)?;
    Ok(vec![gbps, rate, p50, p99])
}

/// The whole comparison: `rounds` rounds of every arm; prints the table
/// (medians, min-max, ratio to routed) and returns every sample as JSON.
pub fn run(netbr: &Path, rounds: usize, secs: f64) -> Result<Value> {
    let arms: Vec<(PodArm, Pods)> = PodArm::ALL
        .iter()
        .map(|&a| Ok((a, Pods::create(a, netbr).with_context(|| a.name())?)))
        .collect::<Result<_>>()?;
    let mut servers = Vec::new();
    for (_, pods) in &arms {
        let server = pods.path(1);
        servers.push((
            load::Iperf3Server::start(&server, STREAM_PORT)?,
            load::EchoServer::start(&server, (std::net::Ipv4Addr::UNSPECIFIED, RR_PORT).into())?,
        ));
    }
    let mut samples = vec![vec![Vec::new(); METRICS.len()]; arms.len()];
    for round in 0..rounds {
        for k in 0..arms.len() {
            let i = (k + round) % arms.len();
            let (arm, pods) = &arms[i];
            let values = measure(pods, secs).with_context(|| arm.name())?;
            for (m, v) in values.into_iter().enumerate() {
                samples[i][m].push(v);
            }
        }
        eprintln!("round {}/{rounds} done", round + 1);
    }
    drop(servers);
    println!("netbr bench --pods: pod to pod across two nodes; {rounds} rounds x {secs} s; medians (min-max), ratio to routed");
    let mut rows = Vec::new();
    for (m, (metric, _)) in METRICS.iter().enumerate() {
        println!("{metric}");
        let routed = stat(&samples[0][m]).median;
        for (i, (arm, _)) in arms.iter().enumerate() {
            let st = stat(&samples[i][m]);
            let ratio = if routed > 0.0 {
                st.median / routed
            } else {
                0.0
            };
            println!(
                "  {:<18} {:>12.2} ({:.2}-{:.2})  {ratio:.2}x",
                arm.name(),
                st.median,
                st.min,
                st.max
            );
            rows.push(json!({"arm": arm.name(), "metric": metric, "median": st.median, "min": st.min, "max": st.max, "samples": samples[i][m]}));
        }
    }
    Ok(json!({"rounds": rounds, "secs_per_metric": secs, "results": rows}))
}
