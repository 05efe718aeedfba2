//! The wire types of Docker's remote network-driver API (libnetwork's
//! `remote/api`), as dockerd 20.10 sends them.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// The generic options Docker passes (`-o key=value` lands under
/// `com.docker.network.generic`).
pub const GENERIC: &str = "com.docker.network.generic";
pub const PORTMAP: &str = "com.docker.network.portmap";

#[derive(Deserialize, Debug, Default, Clone)]
#[serde(rename_all = "PascalCase")]
pub struct IpamData {
    #[serde(default)]
    pub pool: String,
    #[serde(default)]
    pub gateway: String,
}

#[derive(Deserialize, Debug, Default)]
#[serde(rename_all = "PascalCase")]
pub struct CreateNetwork {
    #[serde(rename = "NetworkID")]
    pub network_id: String,
    #[serde(default)]
    pub options: BTreeMap<String, Value>,
    #[serde(rename = "IPv4Data", default)]
    pub ipv4_data: Vec<IpamData>,
    #[serde(rename = "IPv6Data", default)]
    pub ipv6_data: Vec<IpamData>,
}

impl CreateNetwork {
    /// `-o` options, as strings.
    pub fn generic(&self) -> BTreeMap<String, String> {
        self.options
            .get(GENERIC)
            .and_then(Value::as_object)
            .map(|m| {
                m.iter()
                    .map(|(k, v)| {
                        let v = v
                            .as_str()
                            .map(str::to_string)
                            .unwrap_or_else(|| v.to_string());
                        (k.clone(), v)
                    })
                    .collect()
            })
            .unwrap_or_default()
    }
}

#[derive(Deserialize, Debug, Default)]
#[serde(rename_all = "PascalCase")]
pub struct NetworkRef {
    #[serde(rename = "NetworkID")]
    pub network_id: String,
}

#[derive(Deserialize, Debug, Default)]
#[serde(rename_all = "PascalCase")]
pub struct EndpointInterface {
    #[serde(default)]
    pub address: String,
    #[serde(rename = "AddressIPv6", default)]
    pub address_ipv6: String,
    #[serde(default)]
    pub mac_address: String,
}

/// CreateEndpoint, Join, ProgramExternalConnectivity and the calls that
/// only name an endpoint share these fields.
#[derive(Deserialize, Debug, Default)]
#[serde(rename_all = "PascalCase")]
pub struct EndpointRequest {
    #[serde(rename = "NetworkID")]
    pub network_id: String,
    #[serde(rename = "EndpointID")]
    pub endpoint_id: String,
    #[serde(default)]
    pub interface: Option<EndpointInterface>,
    #[serde(default)]
    pub sandbox_key: String,
    #[serde(default)]
    pub options: BTreeMap<String, Value>,
}

/// One port binding of `com.docker.network.portmap`.
#[derive(Deserialize, Serialize, Debug, Clone, PartialEq, Eq)]
#[serde(rename_all = "PascalCase")]
pub struct PortBinding {
    pub proto: u8,
    #[serde(rename = "IP", default)]
    pub ip: String,
    pub port: u16,
    #[serde(rename = "HostIP", default)]
    pub host_ip: String,
    #[serde(default)]
    pub host_port: u16,
    #[serde(default)]
    pub host_port_end: u16,
}

impl EndpointRequest {
    /// A `--driver-opt` of `docker network connect`: dockerd passes them
    /// as top-level keys of `Options`.
    pub fn driver_opts(&self) -> BTreeMap<String, String> {
        self.options
            .iter()
            .filter(|(k, _)| k.starts_with("netbr."))
            .map(|(k, v)| {
                (
                    k.clone(),
                    v.as_str()
                        .map(str::to_string)
                        .unwrap_or_else(|| v.to_string()),
                )
            })
            .collect()
    }

    pub fn port_bindings(&self) -> Result<Vec<PortBinding>, String> {
        match self.options.get(PORTMAP) {
            None | Some(Value::Null) => Ok(Vec::new()),
            Some(v) => serde_json::from_value(v.clone())
                .map_err(|e| format!("{PORTMAP} is not a list of port bindings: {e}")),
        }
    }
}

#[derive(Serialize, Debug)]
#[serde(rename_all = "PascalCase")]
pub struct InterfaceName {
    pub src_name: String,
    pub dst_prefix: String,
}

#[derive(Serialize, Debug)]
#[serde(rename_all = "PascalCase")]
pub struct JoinResponse {
    pub interface_name: InterfaceName,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub gateway: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dockerd_requests_parse() {
        let net: CreateNetwork = serde_json::from_str(
            r#"{"NetworkID":"abc","Options":{"com.docker.network.enable_ipv6":false,"com.docker.network.generic":{"netbr.uplink":"up0","netbr.ct-max":"4096"}},"IPv4Data":[{"AddressSpace":"LocalDefault","Gateway":"10.82.0.1/24","Pool":"10.82.0.0/24"}],"IPv6Data":[]}"#,
        )
        .unwrap();
        assert_eq!(net.generic()["netbr.uplink"], "up0");
        assert_eq!(net.generic()["netbr.ct-max"], "4096");
        assert_eq!(net.ipv4_data[0].gateway, "10.82.0.1/24");
        let ep: EndpointRequest = serde_json::from_str(
            r#"{"NetworkID":"n","EndpointID":"e","Interface":{"Address":"10.82.0.2/24","AddressIPv6":"","MacAddress":""},"Options":{"com.docker.network.endpoint.exposedports":[{"Proto":6,"Port":80}],"com.docker.network.portmap":[{"Proto":6,"IP":"","Port":80,"HostIP":"","HostPort":8080,"HostPortEnd":8080},{"Proto":17,"IP":"","Port":53,"HostIP":"127.0.0.1","HostPort":0,"HostPortEnd":0}]}}"#,
        )
        .unwrap();
        let ports = ep.port_bindings().unwrap();
        assert_eq!(ports.len(), 2);
        assert_eq!(ports[1].host_ip, "127.0.0.1");
        assert_eq!(ports[1].host_port, 0);
        assert_eq!(ep.interface.unwrap().address, "10.82.0.2/24");
    }
}
