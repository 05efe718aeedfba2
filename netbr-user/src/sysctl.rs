//! `/proc/sys/net` resolves to the network namespace of the thread that
//! opens it, so these act on the namespace netbr runs in.

use anyhow::{Context as _, Result};

pub fn write(key: &str, value: &str) -> Result<()> {
    let path = format!("/proc/sys/{}", key.replace('.', "/"));
    std::fs::write(&path, value).with_context(|| format!("setting {key}={value}"))
}

pub fn read(key: &str) -> Result<String> {
    let path = format!("/proc/sys/{}", key.replace('.', "/"));
    Ok(std::fs::read_to_string(&path)
        .with_context(|| format!("reading {key}"))?
        .trim()
        .to_string())
}

/// The host's ephemeral port range (`net.ipv4.ip_local_port_range`).
pub fn local_port_range() -> Result<(u16, u16)> {
    let text = read("net.ipv4.ip_local_port_range")?;
    let mut it = text.split_whitespace().map(str::parse::<u16>);
    match (it.next(), it.next()) {
        (Some(Ok(a)), Some(Ok(b))) => Ok((a, b)),
        _ => anyhow::bail!("unexpected ip_local_port_range {text:?}"),
    }
}
