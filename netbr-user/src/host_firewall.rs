//! Reading the host's netfilter configuration for a forward policy that
//! drops what it does not accept (Docker's own install sets `iptables -P
//! FORWARD DROP`; ufw and firewalld deny forwarding by default). netbr
//! installs no rule, so it can only tell the user what such a policy means
//! for its traffic; it reads, never writes.

use std::{
    io::Read as _,
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use serde_json::Value;

/// How long a firewall tool may take before netbr gives up asking.
const TOOL_TIMEOUT: Duration = Duration::from_secs(5);

/// The forward-hook chains of this network namespace that drop what their
/// rules do not accept, each described as `TOOL table FAMILY NAME chain
/// CHAIN (how)`. Empty when there are none, or when neither `nft` nor
/// `iptables-legacy` is installed to ask.
pub fn restrictive_forward_chains() -> Vec<String> {
    let mut found = Vec::new();
    if let Some(doc) = nft_ruleset() {
        found.extend(dropping_forward_chains(&doc));
    }
    if legacy_table("filter") {
        if let Some(out) = tool_output("iptables-legacy", &["-S", "FORWARD"]) {
            if out.lines().any(|l| l.trim() == "-P FORWARD DROP") {
                found.push("iptables-legacy table filter chain FORWARD (policy drop)".into());
            }
        }
    }
    found
}

/// kube-proxy's rules in this network namespace, each described as
/// `TOOL table FAMILY NAME [chain CHAIN] (mode)`: its nftables table
/// (`table ip kube-proxy`, nftables mode) or its `KUBE-SERVICES` chain
/// (iptables mode, through iptables-nft or iptables-legacy). Their
/// presence means the host's netfilter gives Services' packets new
/// destinations, which netbr must let it see (`CFG_HOST_NAT`).
pub fn service_nat() -> Vec<String> {
    let mut found = Vec::new();
    if let Some(doc) = nft_ruleset() {
        found.extend(kube_proxy_objects(&doc));
    }
    if legacy_table("nat")
        && tool_output("iptables-legacy", &["-t", "nat", "-S", "KUBE-SERVICES"]).is_some()
    {
        found.push(
            "iptables-legacy table nat chain KUBE-SERVICES (kube-proxy, iptables mode)".into(),
        );
    }
    found
}

/// What finding kube-proxy's rules means, for `attach` and `netbr ls`.
pub fn service_nat_note(found: &[String], bridge: &str) -> String {
    format!(
        "note: kube-proxy's rules are here ({}). Masquerade flows on {bridge} take the host stack \
         both ways so that netfilter sees every packet of a Service's flow; published ports and \
         hairpin keep the fast path",
        found.join("; ")
    )
}

/// `nft -j list ruleset`, parsed; `None` without `nft`.
fn nft_ruleset() -> Option<Value> {
    serde_json::from_str(&tool_output("nft", &["-j", "list", "ruleset"])?).ok()
}

/// Whether legacy iptables has `table` in this namespace. Legacy iptables
/// keeps its tables out of nftables' sight, and a table exists only if
/// this file lists it (asking `iptables-legacy` otherwise would create it).
fn legacy_table(table: &str) -> bool {
    std::fs::read_to_string("/proc/thread-self/net/ip_tables_names")
        .is_ok_and(|names| names.lines().any(|l| l.trim() == table))
}

fn kube_proxy_objects(doc: &Value) -> Vec<String> {
    let items = doc["nftables"].as_array().map(Vec::as_slice).unwrap_or(&[]);
    let name = |v: &Value| v.as_str().unwrap_or("?").to_string();
    let mut found = Vec::new();
    for item in items {
        if let Some(t) = item.get("table").filter(|t| t["name"] == "kube-proxy") {
            found.push(format!(
                "nftables table {} kube-proxy (kube-proxy, nftables mode)",
                name(&t["family"])
            ));
        }
        if let Some(c) = item.get("chain").filter(|c| c["name"] == "KUBE-SERVICES") {
            found.push(format!(
                "nftables table {} {} chain KUBE-SERVICES (kube-proxy, iptables mode)",
                name(&c["family"]),
                name(&c["table"])
            ));
        }
    }
    found
}

/// What a restrictive forward policy means for a bridge attached with or
/// without the fast path, for `attach` and `netbr ls` to print.
pub fn advice(chains: &[String], bridge: &str, fast_path: bool) -> String {
    let list = chains.join("; ");
    if fast_path {
        format!(
            "note: the host firewall drops forwarded traffic ({list}). netbr's published ports, \
             masquerade and hairpin on {bridge} bypass it (the fast path delivers them by \
             redirect); traffic netbr does not translate, such as direct routing and ICMP errors \
             from outside, stays subject to it"
        )
    } else {
        format!(
            "warning: the host firewall drops forwarded traffic ({list}). Attached with \
             --no-fast-path, netbr's published ports and masquerade on {bridge} take the host's \
             forward path and are dropped there: attach {bridge} again without --no-fast-path"
        )
    }
}

/// The chains of an `nft -j list ruleset` document that hook forward and
/// drop what they do not accept: by policy, or by an unconditional drop or
/// reject as their last rule (as firewalld ends its forward chain).
fn dropping_forward_chains(doc: &Value) -> Vec<String> {
    let items = doc["nftables"].as_array().map(Vec::as_slice).unwrap_or(&[]);
    let mut found = Vec::new();
    for chain in items.iter().filter_map(|i| i.get("chain")) {
        if chain["hook"] != "forward" {
            continue;
        }
        let (family, table, name) = (&chain["family"], &chain["table"], &chain["name"]);
        let how = if chain["policy"] == "drop" {
            "policy drop"
        } else {
            let last_rule = items
                .iter()
                .filter_map(|i| i.get("rule"))
                .rfind(|r| r["family"] == *family && r["table"] == *table && r["chain"] == *name);
            match last_rule.and_then(|r| r["expr"].as_array()) {
                Some(expr) if expr.len() == 1 && expr[0].get("drop").is_some() => "ends in drop",
                Some(expr) if expr.len() == 1 && expr[0].get("reject").is_some() => {
                    "ends in reject"
                }
                _ => continue,
            }
        };
        found.push(format!(
            "nftables table {} {} chain {} ({how})",
            family.as_str().unwrap_or("?"),
            table.as_str().unwrap_or("?"),
            name.as_str().unwrap_or("?")
        ));
    }
    found
}

/// A read-only tool's standard output, or `None` if it is missing, fails,
/// or takes longer than [`TOOL_TIMEOUT`] (then it is killed).
fn tool_output(tool: &str, args: &[&str]) -> Option<String> {
    let mut child = Command::new(tool)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .ok()?;
    let mut stdout = child.stdout.take()?;
    let reader = std::thread::spawn(move || {
        let mut out = String::new();
        stdout.read_to_string(&mut out).map(|_| out)
    });
    let deadline = Instant::now() + TOOL_TIMEOUT;
    loop {
        match child.try_wait() {
            Ok(Some(status)) if status.success() => return reader.join().ok()?.ok(),
            Ok(Some(_)) | Err(_) => return None,
            Ok(None) if Instant::now() >= deadline => {
                let _ = child.kill();
                let _ = child.wait();
                return None;
            }
            Ok(None) => std::thread::sleep(Duration::from_millis(20)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn doc(items: &str) -> Value {
        serde_json::from_str(&format!(r#"{{"nftables":[{{"metainfo":{{}}}},{items}]}}"#)).unwrap()
    }

    #[test]
    fn a_forward_chain_with_policy_drop_is_found() {
        let d = doc(
            r#"{"chain":{"family":"ip","table":"filter","name":"FORWARD","hook":"forward","policy":"drop"}},
               {"chain":{"family":"ip","table":"filter","name":"INPUT","hook":"input","policy":"drop"}}"#,
        );
        assert_eq!(
            dropping_forward_chains(&d),
            ["nftables table ip filter chain FORWARD (policy drop)"]
        );
    }

    #[test]
    fn a_forward_chain_ending_in_reject_is_found_and_accepting_ones_are_not() {
        let d = doc(
            r#"{"chain":{"family":"inet","table":"firewalld","name":"filter_FORWARD","hook":"forward","policy":"accept"}},
               {"rule":{"family":"inet","table":"firewalld","chain":"filter_FORWARD","expr":[{"match":{}},{"accept":null}]}},
               {"rule":{"family":"inet","table":"firewalld","chain":"filter_FORWARD","expr":[{"reject":{"type":"icmpx"}}]}},
               {"chain":{"family":"inet","table":"open","name":"fwd","hook":"forward","policy":"accept"}},
               {"rule":{"family":"inet","table":"open","chain":"fwd","expr":[{"match":{}},{"drop":null}]}}"#,
        );
        assert_eq!(
            dropping_forward_chains(&d),
            ["nftables table inet firewalld chain filter_FORWARD (ends in reject)"]
        );
    }

    #[test]
    fn kube_proxys_tables_and_chains_are_found_in_either_mode() {
        let d = doc(r#"{"table":{"family":"ip","name":"kube-proxy","handle":1}},
               {"chain":{"family":"ip","table":"nat","name":"KUBE-SERVICES","handle":2}},
               {"chain":{"family":"ip","table":"nat","name":"DOCKER","handle":3}}"#);
        assert_eq!(
            kube_proxy_objects(&d),
            [
                "nftables table ip kube-proxy (kube-proxy, nftables mode)",
                "nftables table ip nat chain KUBE-SERVICES (kube-proxy, iptables mode)"
            ]
        );
        assert!(kube_proxy_objects(&doc(r#"{"table":{"family":"ip","name":"nat"}}"#)).is_empty());
    }

    #[test]
    fn an_empty_ruleset_has_none() {
        assert!(
            dropping_forward_chains(&doc(r#"{"table":{"family":"ip","name":"nat"}}"#)).is_empty()
        );
    }
}
