//! The CNI specification's wire types: the network configuration netbr-cni
//! reads, the result it prints, and the error object.

use std::net::Ipv4Addr;

use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

/// Spec versions this plugin speaks. 0.4.0 results carry `"version":"4"` on
/// each IP; 1.x results do not. GC and STATUS exist from 1.1.0.
pub const SUPPORTED_VERSIONS: [&str; 3] = ["0.4.0", "1.0.0", "1.1.0"];

/// The spec's well-known error codes, and netbr's own (100 and above).
pub mod code {
    pub const INCOMPATIBLE_VERSION: u32 = 1;
    pub const UNSUPPORTED_FIELD: u32 = 2;
    pub const UNKNOWN_CONTAINER: u32 = 3;
    pub const INVALID_ENVIRONMENT: u32 = 4;
    pub const IO_FAILURE: u32 = 5;
    pub const DECODE_FAILURE: u32 = 6;
    pub const INVALID_CONFIG: u32 = 7;
    /// STATUS: the plugin cannot serve ADD now.
    pub const NOT_AVAILABLE: u32 = 50;
    /// A host port or address the request asks for is taken.
    pub const TAKEN: u32 = 100;
    /// The datapath could not be set up or changed.
    pub const DATAPATH: u32 = 101;
    /// The IPAM plugin failed or returned an unusable result.
    pub const IPAM: u32 = 102;
    /// CHECK found the attachment differs from what ADD made.
    pub const CHECK_FAILED: u32 = 103;
}

/// The spec's error object; printed on stdout with a non-zero exit.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
pub struct CniError {
    #[serde(rename = "cniVersion")]
    pub cni_version: String,
    pub code: u32,
    pub msg: String,
    #[serde(skip_serializing_if = "String::is_empty", default)]
    pub details: String,
}

impl CniError {
    pub fn new(code: u32, msg: impl Into<String>) -> Self {
        Self {
            cni_version: String::new(),
            code,
            msg: msg.into(),
            details: String::new(),
        }
    }

    /// An error with `err`'s whole chain as details.
    pub fn from_anyhow(code: u32, msg: impl Into<String>, err: &anyhow::Error) -> Self {
        Self {
            details: format!("{err:#}"),
            ..Self::new(code, msg)
        }
    }
}

impl std::fmt::Display for CniError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} (code {})", self.msg, self.code)?;
        if !self.details.is_empty() {
            write!(f, ": {}", self.details)?;
        }
        Ok(())
    }
}

impl std::error::Error for CniError {}

/// One entry of `runtimeConfig.portMappings` (the `portMappings` capability).
/// Runtimes spell the keys two ways: camelCase (Podman, the CNI
/// conventions) and capitalised (containerd's CRI, through go-cni, whose
/// structs carry no JSON tags); Go's decoder, which every reference plugin
/// uses, ignores case, so both must be read.
#[derive(Deserialize, Serialize, Debug, Clone, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct PortMapping {
    #[serde(alias = "HostPort")]
    pub host_port: u16,
    #[serde(alias = "ContainerPort")]
    pub container_port: u16,
    #[serde(default, alias = "Protocol")]
    pub protocol: String,
    #[serde(default, rename = "hostIP", alias = "HostIP", alias = "hostIp")]
    pub host_ip: String,
}

#[derive(Deserialize, Debug, Clone, Default)]
#[serde(rename_all = "camelCase")]
pub struct RuntimeConfig {
    #[serde(default)]
    pub port_mappings: Vec<PortMapping>,
    /// The `bandwidth` capability.
    pub bandwidth: Option<Bandwidth>,
}

/// `runtimeConfig.bandwidth`, as the CNI conventions define it: rates in
/// bits per second, bursts in bits; a rate left out (or 0) sets no limit,
/// and a burst of `BURST_NOT_GIVEN` is none given. Keys in either spelling,
/// as for `PortMapping`.
#[derive(Deserialize, Debug, Clone, Copy, Default, PartialEq, Eq)]
#[serde(default)]
#[serde(rename_all = "camelCase")]
pub struct Bandwidth {
    #[serde(alias = "IngressRate")]
    pub ingress_rate: Option<u64>,
    #[serde(alias = "IngressBurst")]
    pub ingress_burst: Option<u64>,
    #[serde(alias = "EgressRate")]
    pub egress_rate: Option<u64>,
    #[serde(alias = "EgressBurst")]
    pub egress_burst: Option<u64>,
}

/// The burst kubelet passes when a pod's annotations give none
/// (`math.MaxUint32`, through containerd's CRI).
pub const BURST_NOT_GIVEN: u64 = u32::MAX as u64;

/// One entry of `cni.dev/valid-attachments` (GC).
#[derive(Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct Attachment {
    #[serde(rename = "containerID")]
    pub container_id: String,
    pub ifname: String,
}

/// The plugin's configuration: the spec's keys plus `attach`'s options.
#[derive(Deserialize, Debug, Clone)]
#[serde(rename_all = "camelCase")]
pub struct NetConf {
    pub cni_version: String,
    #[serde(default)]
    pub name: String,
    #[serde(rename = "type", default)]
    pub plugin_type: String,
    pub bridge: Option<String>,
    pub subnet: Option<String>,
    pub uplink: Option<String>,
    pub gateway: Option<Ipv4Addr>,
    pub ct_max: Option<u32>,
    pub snat_ports: Option<String>,
    pub icc: Option<bool>,
    pub fast_path: Option<bool>,
    /// Destinations pods reach with their own address (ip-masq-agent's
    /// key): the cluster's pod CIDR, say.
    #[serde(rename = "nonMasqueradeCIDRs")]
    pub non_masquerade_cidrs: Option<Vec<String>>,
    /// The reference `bridge` plugin's key: `false` masquerades nothing.
    pub ip_masq: Option<bool>,
    pub allow_direct_routing: Option<bool>,
    /// MTU of the bridge and the pods' interfaces (the `bridge` plugin's key).
    pub mtu: Option<u32>,
    /// Limits for every container of the network, as the reference
    /// `bandwidth` plugin takes them in its own configuration; a runtime's
    /// `runtimeConfig.bandwidth` replaces them.
    #[serde(flatten)]
    pub bandwidth: Bandwidth,
    /// Delegated addressing; passed whole to the IPAM plugin's stdin.
    pub ipam: Option<Value>,
    #[serde(default)]
    pub runtime_config: RuntimeConfig,
    pub prev_result: Option<Value>,
    #[serde(rename = "cni.dev/valid-attachments")]
    pub valid_attachments: Option<Vec<Attachment>>,
}

impl NetConf {
    pub fn bridge(&self) -> &str {
        self.bridge.as_deref().unwrap_or(crate::cmd::DEFAULT_BRIDGE)
    }

    /// The IPAM plugin's name, when addressing is delegated.
    pub fn ipam_type(&self) -> Option<&str> {
        self.ipam.as_ref()?.get("type")?.as_str()
    }
}

/// Whether `version` is at least `major.minor.0`.
pub fn version_at_least(version: &str, major: u32, minor: u32) -> bool {
    let mut parts = version.split('.').map(|p| p.parse::<u32>().unwrap_or(0));
    let (a, b) = (parts.next().unwrap_or(0), parts.next().unwrap_or(0));
    (a, b) >= (major, minor)
}

/// What ADD made, as the spec's result of `version`.
pub struct Made<'a> {
    pub bridge: &'a str,
    pub bridge_mac: [u8; 6],
    pub host_ifname: &'a str,
    pub host_mac: [u8; 6],
    pub ifname: &'a str,
    pub mac: [u8; 6],
    pub netns: &'a str,
    pub ip: Ipv4Addr,
    pub prefix: u8,
    pub gateway: Ipv4Addr,
}

fn mac(m: [u8; 6]) -> String {
    m.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

pub fn result(version: &str, m: &Made) -> Value {
    let mut ip = json!({
        "address": format!("{}/{}", m.ip, m.prefix),
        "gateway": m.gateway.to_string(),
        "interface": 2,
    });
    if !version_at_least(version, 1, 0) {
        ip["version"] = json!("4");
    }
    json!({
        "cniVersion": version,
        "interfaces": [
            {"name": m.bridge, "mac": mac(m.bridge_mac)},
            {"name": m.host_ifname, "mac": mac(m.host_mac)},
            {"name": m.ifname, "mac": mac(m.mac), "sandbox": m.netns},
        ],
        "ips": [ip],
        "routes": [{"dst": "0.0.0.0/0", "gw": m.gateway.to_string()}],
        "dns": {},
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn containerd_cri_capitalised_keys_parse_as_camel_case_ones() {
        let rc: RuntimeConfig = serde_json::from_str(
            r#"{"portMappings":[{"HostPort":8080,"ContainerPort":80,"Protocol":"tcp","HostIP":""}],
                "bandwidth":{"IngressRate":0,"IngressBurst":4294967295,
                             "EgressRate":10000000,"EgressBurst":4294967295}}"#,
        )
        .unwrap();
        assert_eq!(
            rc.port_mappings[0],
            PortMapping {
                host_port: 8080,
                container_port: 80,
                protocol: "tcp".into(),
                host_ip: String::new(),
            }
        );
        let bw = rc.bandwidth.unwrap();
        assert_eq!(
            (bw.egress_rate, bw.egress_burst),
            (Some(10_000_000), Some(BURST_NOT_GIVEN))
        );
        assert_eq!(bw.ingress_rate, Some(0));
    }

    #[test]
    fn a_conflist_plugin_entry_parses_with_its_runtime_config() {
        let conf: NetConf = serde_json::from_str(
            r#"{"cniVersion":"1.0.0","name":"nbnet","type":"netbr-cni","bridge":"nb0",
                "subnet":"172.30.0.0/16","uplink":"up0","ctMax":4096,"fastPath":true,
                "egressRate":20000000,
                "capabilities":{"portMappings":true},
                "runtimeConfig":{"portMappings":[
                  {"hostPort":8080,"containerPort":80,"protocol":"tcp"},
                  {"hostPort":8443,"containerPort":443,"protocol":"tcp","hostIP":"127.0.0.1"}],
                  "bandwidth":{"ingressRate":40000000,"ingressBurst":80000}},
                "cni.dev/valid-attachments":[{"containerID":"a","ifname":"eth0"}]}"#,
        )
        .unwrap();
        assert_eq!(conf.bridge(), "nb0");
        assert_eq!(conf.ct_max, Some(4096));
        assert_eq!(conf.fast_path, Some(true));
        assert_eq!(conf.runtime_config.port_mappings.len(), 2);
        assert_eq!(conf.bandwidth.egress_rate, Some(20_000_000));
        assert_eq!(
            conf.runtime_config.bandwidth,
            Some(Bandwidth {
                ingress_rate: Some(40_000_000),
                ingress_burst: Some(80_000),
                egress_rate: None,
                egress_burst: None,
            })
        );
        assert_eq!(conf.runtime_config.port_mappings[1].host_ip, "127.0.0.1");
        assert_eq!(conf.runtime_config.port_mappings[0].host_ip, "");
        assert_eq!(
            conf.valid_attachments.as_ref().unwrap()[0],
            Attachment {
                container_id: "a".into(),
                ifname: "eth0".into()
            }
        );
        assert!(conf.ipam_type().is_none());
    }

    #[test]
    fn results_follow_the_requested_version() {
        let m = Made {
            bridge: "nb0",
            bridge_mac: [2, 0, 0, 0, 0, 1],
            host_ifname: "nb1234",
            host_mac: [2, 0, 0, 0, 0, 2],
            ifname: "eth0",
            mac: [2, 0, 0, 0, 0, 3],
            netns: "/run/netns/x",
            ip: Ipv4Addr::new(172, 30, 0, 2),
            prefix: 16,
            gateway: Ipv4Addr::new(172, 30, 0, 1),
        };
        let v1 = result("1.0.0", &m);
        assert_eq!(v1["ips"][0]["address"], "172.30.0.2/16");
        assert_eq!(v1["ips"][0]["interface"], 2);
        assert!(v1["ips"][0].get("version").is_none());
        assert_eq!(v1["interfaces"][2]["sandbox"], "/run/netns/x");
        assert_eq!(v1["interfaces"][2]["mac"], "02:00:00:00:00:03");
        let v04 = result("0.4.0", &m);
        assert_eq!(v04["ips"][0]["version"], "4");
        assert_eq!(v04["cniVersion"], "0.4.0");
    }

    #[test]
    fn versions_compare_by_major_and_minor() {
        assert!(version_at_least("1.1.0", 1, 1));
        assert!(!version_at_least("1.0.0", 1, 1));
        assert!(!version_at_least("0.4.0", 1, 0));
    }

    #[test]
    fn errors_serialize_as_the_spec_says() {
        let e = CniError {
            cni_version: "1.0.0".into(),
            ..CniError::new(code::TAKEN, "host port 8080 is taken")
        };
        let v = serde_json::to_value(&e).unwrap();
        assert_eq!(v["code"], 100);
        assert_eq!(v["msg"], "host port 8080 is taken");
        assert!(v.get("details").is_none());
    }
}
