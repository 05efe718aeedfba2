//! The control plane's state file: what packets do not need (names,
//! namespaces, owners, the ports each endpoint asked for), kept beside the
//! bridge's lock and replaced atomically, so a reader never sees half of it.

use std::{
    io::Write as _,
    net::{Ipv4Addr, Ipv6Addr},
    path::{Path, PathBuf},
};

use anyhow::{bail, Context as _, Result};
use netbr_common::{proto_name, IPPROTO_TCP, IPPROTO_UDP};
use serde::{Deserialize, Serialize};

pub const STATE_FILE: &str = "state.json";
/// Bumped when the file's meaning changes incompatibly.
pub const STATE_VERSION: u32 = 1;

#[derive(Serialize, Deserialize, Debug, Clone, Default, PartialEq)]
pub struct State {
    pub version: u32,
    pub bridge: String,
    /// What the bridge was attached with; kept by `detach --keep-bridge`.
    pub network: Option<Network>,
    pub endpoints: Vec<EndpointState>,
    /// `netbr firewall` rules, in the order they were added.
    #[serde(default)]
    pub firewall: Vec<FirewallRule>,
    /// The id the next firewall rule gets; ids are never reused.
    #[serde(default)]
    pub next_rule_id: u32,
}

/// One `netbr firewall` rule as the user gave it (host byte order), with
/// the hit-counter slots of its datapath entries.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct FirewallRule {
    pub id: u32,
    pub allow: bool,
    /// `true`: `--out`, new flows from containers; `false`: `--in`.
    pub out: bool,
    /// `(address, prefix length)` of `--from` (`in`) or `--to` (`out`).
    pub cidr: Option<(Ipv4Addr, u8)>,
    /// `(protocol, port)`; protocol 0 for tcp and udp.
    pub port: Option<(u8, u16)>,
    pub endpoint: Option<String>,
    /// One per datapath entry (two for a port without protocol).
    pub slots: Vec<u32>,
}

/// The bridge's network, as `attach` set it up.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
pub struct Network {
    /// `a.b.c.d/len`.
    pub subnet: String,
    pub gateway: Ipv4Addr,
    /// The IPv6 subnet (`addr/len`) and gateway of a dual-stack bridge.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subnet6: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gateway6: Option<Ipv6Addr>,
    /// An IPv6-only bridge: `subnet` and the endpoints' IPv4 addresses are
    /// only the keys the datapath names them by (`store::attach::
    /// ipv6_only_keys`), configured on no link.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub ipv6_only: bool,
    pub uplink: String,
    /// The Docker network this bridge serves, when the Docker driver
    /// attached it.
    #[serde(default)]
    pub docker_network: Option<String>,
    /// The host IP a Docker network's `-p` without one publishes on
    /// (`com.docker.network.bridge.host_binding_ipv4`); none: every address.
    #[serde(default)]
    pub docker_host_ip: Option<Ipv4Addr>,
}

/// Who made an endpoint, and so who may remove it.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum Owner {
    /// `netbr endpoint add`.
    Cli,
    /// A CNI runtime: the network's name and the attachment's identity.
    Cni {
        network: String,
        container_id: String,
    },
    /// Docker's remote-driver API.
    Docker {
        network_id: String,
        endpoint_id: String,
    },
}

#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
pub struct EndpointState {
    pub name: String,
    pub ip: Ipv4Addr,
    /// Its IPv6 address, on a dual-stack bridge.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ip6: Option<Ipv6Addr>,
    /// The container's network namespace.
    pub netns: PathBuf,
    /// netbr created the named namespace and removes it with the endpoint.
    pub owns_netns: bool,
    pub host_ifname: String,
    pub host_ifindex: u32,
    /// The interface's name inside the container (`eth0`, `CNI_IFNAME`).
    pub ifname: String,
    pub mac: [u8; 6],
    pub owner: Owner,
    pub ports: Vec<Port>,
    /// Bandwidth limits; none by default.
    #[serde(default)]
    pub limits: Limits,
}

/// An endpoint's bandwidth limits, one per direction: `egress` is what
/// the container sends, `ingress` what it receives.
#[derive(Serialize, Deserialize, Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Limits {
    pub egress: Option<Limit>,
    pub ingress: Option<Limit>,
}

#[derive(Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limit {
    /// Bits per second.
    pub rate: u64,
    /// Bytes that may leave at once after a pause; 0 by default.
    #[serde(default)]
    pub burst: u64,
}

/// One published port: `host_ip:host_port/proto -> container_port`.
#[derive(Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq)]
pub struct Port {
    pub proto: u8,
    /// `None`: every address of the host, of both families; `0.0.0.0`:
    /// every IPv4 one.
    pub host_ip: Option<Ipv4Addr>,
    /// `-p [::]:...`: every IPv6 address of the host, no IPv4 one; with
    /// `host_ip6` (`-p [2001:db8::1]:...`), that IPv6 address alone.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub ipv6_only: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host_ip6: Option<Ipv6Addr>,
    pub host_port: u16,
    pub container_port: u16,
}

impl Port {
    /// `*:8080/tcp`, `[::]:8081/tcp`, `127.0.0.1:8443/tcp` or
    /// `[2001:db8::1]:8083/udp`.
    pub fn host_side(&self) -> String {
        let ip = match (self.host_ip, self.host_ip6, self.ipv6_only) {
            (Some(i), ..) => i.to_string(),
            (None, Some(i6), _) => format!("[{i6}]"),
            (None, None, true) => "[::]".into(),
            (None, None, false) => "*".into(),
        };
        format!("{ip}:{}/{}", self.host_port, proto_name(self.proto))
    }

    pub fn proto_from_name(name: &str) -> Result<u8> {
        match name.to_ascii_lowercase().as_str() {
            "tcp" | "" => Ok(IPPROTO_TCP),
            "udp" => Ok(IPPROTO_UDP),
            other => bail!("protocol {other:?} is not supported: use tcp or udp"),
        }
    }
}

impl EndpointState {
    pub fn container_id(&self) -> Option<&str> {
        match &self.owner {
            Owner::Cli => None,
            Owner::Cni { container_id, .. } => Some(container_id),
            Owner::Docker { endpoint_id, .. } => Some(endpoint_id),
        }
    }

    pub fn mac_string(&self) -> String {
        self.mac
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect::<Vec<_>>()
            .join(":")
    }
}

impl State {
    pub fn new(bridge: &str) -> Self {
        Self {
            version: STATE_VERSION,
            bridge: bridge.to_string(),
            network: None,
            endpoints: Vec::new(),
            firewall: Vec::new(),
            next_rule_id: 1,
        }
    }

    /// The state in `dir`, or a fresh one when there is none yet.
    pub fn load(dir: &Path, bridge: &str) -> Result<Self> {
        let path = dir.join(STATE_FILE);
        let text = match std::fs::read_to_string(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Self::new(bridge)),
            Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
        };
        let state: State = serde_json::from_str(&text)
            .with_context(|| format!("{} is not a netbr state file", path.display()))?;
        if state.version != STATE_VERSION {
            bail!(
                "{} was written by a netbr with state version {} (this one uses {STATE_VERSION}): run netbr detach --bridge {bridge} first",
                path.display(),
                state.version
            );
        }
        Ok(state)
    }

    /// Writes the state next to its final name, syncs it, and renames it
    /// over the old one: readers see the old state or the new, never half.
    pub fn save(&self, dir: &Path) -> Result<()> {
        let path = dir.join(STATE_FILE);
        let tmp = dir.join(format!(".{STATE_FILE}.{}", std::process::id()));
        let write = || -> std::io::Result<()> {
            let mut f = std::fs::File::create(&tmp)?;
            f.write_all(&serde_json::to_vec_pretty(self).map_err(std::io::Error::other)?)?;
            f.sync_all()?;
            std::fs::rename(&tmp, &path)
        };
        write().map_err(|e| {
            let _ = std::fs::remove_file(&tmp);
            anyhow::Error::from(e).context(format!("writing {}", path.display()))
        })
    }

    pub fn endpoint(&self, name: &str) -> Option<&EndpointState> {
        self.endpoints.iter().find(|e| e.name == name)
    }

    pub fn endpoint_mut(&mut self, name: &str) -> Option<&mut EndpointState> {
        self.endpoints.iter_mut().find(|e| e.name == name)
    }

    /// The endpoint a CNI runtime made for (network, container, ifname).
    pub fn cni_endpoint(
        &self,
        network: &str,
        container_id: &str,
        ifname: &str,
    ) -> Option<&EndpointState> {
        self.endpoints.iter().find(|e| {
            e.ifname == ifname
                && matches!(&e.owner, Owner::Cni { network: n, container_id: c } if n == network && c == container_id)
        })
    }

    /// The endpoint Docker knows as `endpoint_id`.
    pub fn docker_endpoint(&self, endpoint_id: &str) -> Option<&EndpointState> {
        self.endpoints.iter().find(
            |e| matches!(&e.owner, Owner::Docker { endpoint_id: id, .. } if id == endpoint_id),
        )
    }

    /// Every published port with its endpoint.
    pub fn ports(&self) -> impl Iterator<Item = (&EndpointState, &Port)> {
        self.endpoints
            .iter()
            .flat_map(|e| e.ports.iter().map(move |p| (e, p)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn endpoint(name: &str) -> EndpointState {
        EndpointState {
            name: name.into(),
            ip: Ipv4Addr::new(172, 30, 0, 2),
            ip6: None,
            netns: "/run/netns/x".into(),
            owns_netns: false,
            host_ifname: "nb1".into(),
            host_ifindex: 7,
            ifname: "eth0".into(),
            mac: [2, 0, 0, 0, 0, 1],
            owner: Owner::Cni {
                network: "n".into(),
                container_id: "abc".into(),
            },
            ports: vec![Port {
                ipv6_only: false,
                proto: IPPROTO_TCP,
                host_ip: None,
                host_ip6: None,
                host_port: 8080,
                container_port: 80,
            }],
            limits: Limits::default(),
        }
    }

    #[test]
    fn state_round_trips_through_its_file_atomically() {
        let dir = std::env::temp_dir().join(format!("netbr-state-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        assert_eq!(State::load(&dir, "b").unwrap(), State::new("b"));
        let mut s = State::new("b");
        s.endpoints.push(endpoint("web"));
        s.save(&dir).unwrap();
        assert_eq!(State::load(&dir, "b").unwrap(), s);
        let names: Vec<_> = std::fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, [STATE_FILE], "no temporary file is left");
        assert!(s.cni_endpoint("n", "abc", "eth0").is_some());
        assert!(s.cni_endpoint("n", "abc", "eth1").is_none());
        assert!(s.cni_endpoint("other", "abc", "eth0").is_none());
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_state_of_another_version_is_refused() {
        let dir = std::env::temp_dir().join(format!("netbr-state-v-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(
            dir.join(STATE_FILE),
            r#"{"version":99,"bridge":"b","network":null,"endpoints":[]}"#,
        )
        .unwrap();
        let err = State::load(&dir, "b").unwrap_err().to_string();
        assert!(err.contains("netbr detach"), "{err}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
