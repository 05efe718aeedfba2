//! Delegating addressing to an IPAM plugin, as the spec describes: the
//! plugin is found on `CNI_PATH` and run with this plugin's environment and
//! configuration, `CNI_COMMAND` set to the operation.

use std::{
    io::Write as _,
    net::Ipv4Addr,
    path::PathBuf,
    process::{Command, Stdio},
};

use serde_json::Value;

use super::types::{code, CniError};

/// Finds plugin `name` in the `:`-separated `CNI_PATH` directories.
fn find(name: &str) -> Result<PathBuf, CniError> {
    if name.is_empty() || name.contains('/') {
        return Err(CniError::new(
            code::INVALID_CONFIG,
            format!("ipam type {name:?} is not a plugin name"),
        ));
    }
    let path = std::env::var("CNI_PATH").unwrap_or_default();
    path.split(':')
        .filter(|d| !d.is_empty())
        .map(|d| PathBuf::from(d).join(name))
        .find(|p| p.is_file())
        .ok_or_else(|| {
            CniError::new(
                code::INVALID_CONFIG,
                format!("IPAM plugin {name} not found in CNI_PATH ({path}): install it or fix the ipam type"),
            )
        })
}

/// Runs IPAM plugin `name` for `command` with `stdin`; `env` overrides the
/// inherited environment (GC releases other containers' addresses).
pub fn exec(
    name: &str,
    command: &str,
    stdin: &[u8],
    env: &[(&str, &str)],
) -> Result<Option<Value>, CniError> {
    let plugin = find(name)?;
    let mut child = Command::new(&plugin)
        .env("CNI_COMMAND", command)
        .envs(env.iter().copied())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| {
            CniError::new(
                code::IPAM,
                format!("running IPAM plugin {}: {e}", plugin.display()),
            )
        })?;
    if let Some(mut input) = child.stdin.take() {
        let _ = input.write_all(stdin);
    }
    let out = child
        .wait_with_output()
        .map_err(|e| CniError::new(code::IPAM, format!("waiting for IPAM plugin {name}: {e}")))?;
    let text = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        // Pass the IPAM plugin's own error on when it printed one.
        if let Ok(e) = serde_json::from_str::<CniError>(&text) {
            return Err(CniError {
                msg: format!("IPAM plugin {name}: {}", e.msg),
                ..e
            });
        }
        return Err(CniError {
            details: String::from_utf8_lossy(&out.stderr).trim().to_string(),
            ..CniError::new(
                code::IPAM,
                format!("IPAM plugin {name} {command} failed: {}", text.trim()),
            )
        });
    }
    if text.trim().is_empty() {
        return Ok(None);
    }
    serde_json::from_str(&text).map(Some).map_err(|e| {
        CniError::new(
            code::IPAM,
            format!("IPAM plugin {name} printed no JSON result: {e}"),
        )
    })
}

/// The first IPv4 address of an IPAM result, with its prefix length.
pub fn first_ipv4(result: &Value) -> Result<(Ipv4Addr, u8), CniError> {
    let bad = |why: &str| CniError::new(code::IPAM, format!("IPAM result unusable: {why}"));
    let ips = result["ips"].as_array().ok_or_else(|| bad("no ips"))?;
    for ip in ips {
        let Some((addr, prefix)) = ip["address"].as_str().and_then(|a| a.split_once('/')) else {
            continue;
        };
        if let (Ok(addr), Ok(prefix)) = (addr.parse::<Ipv4Addr>(), prefix.parse::<u8>()) {
            return Ok((addr, prefix));
        }
    }
    Err(bad("no IPv4 address"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_first_ipv4_address_of_a_result_is_taken() {
        let r: Value = serde_json::from_str(
            r#"{"cniVersion":"1.0.0","ips":[{"address":"fd00::2/64"},{"address":"172.30.0.9/16","gateway":"172.30.0.1"}]}"#,
        )
        .unwrap();
        assert_eq!(first_ipv4(&r).unwrap(), (Ipv4Addr::new(172, 30, 0, 9), 16));
        assert_eq!(
            first_ipv4(&serde_json::json!({"ips": []}))
                .unwrap_err()
                .code,
            code::IPAM
        );
    }

    #[test]
    fn a_plugin_outside_cni_path_is_a_config_error() {
        assert_eq!(find("../x").unwrap_err().code, code::INVALID_CONFIG);
    }
}
