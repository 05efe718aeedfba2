//! `netbr firewall` rules: kept in the state file, mirrored into the
//! datapath's trie, scopes and config (semantics: `netbr_common::firewall`).

use std::{
    collections::{HashMap, HashSet},
    net::Ipv4Addr,
};

use anyhow::{anyhow, bail, Context as _, Result};
use aya::maps::lpm_trie::Key;
use netbr_common::firewall::{
    entries, scopes, FwKey, FwRule, RuleSpec, FIREWALL_MAX_ENTRIES, FW_ALLOW, FW_DENY, FW_IN,
    FW_OUT,
};

use super::{
    state::{FirewallRule, State},
    Store,
};
use crate::bpf::datapath::{Datapath, BPF_NOEXIST};

/// A rule as `netbr firewall add` asks for it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RuleRequest {
    pub allow: bool,
    pub out: bool,
    pub from: Option<(Ipv4Addr, u8)>,
    pub to: Option<(Ipv4Addr, u8)>,
    pub port: Option<(u8, u16)>,
    pub endpoint: Option<String>,
}

/// A rule with the flows it decided, for `netbr firewall ls`.
pub struct RuleHits {
    pub rule: FirewallRule,
    pub hits: u64,
}

/// `a.b.c.d` or `a.b.c.d/len`, any length from 0 to 32.
pub fn parse_cidr(s: &str) -> Result<(Ipv4Addr, u8)> {
    let (addr, len) = match s.split_once('/') {
        Some((a, l)) => (a, l.parse::<u8>().ok().filter(|l| *l <= 32)),
        None => (s, Some(32)),
    };
    if addr.parse::<std::net::Ipv6Addr>().is_ok() {
        anyhow::bail!(
            "{s:?} is IPv6, and netbr firewall rules are IPv4 only so far (while rules exist, published ports do not open to IPv6): give an IPv4 address or block"
        );
    }
    let len = len.ok_or_else(|| anyhow!("{s:?} has no prefix length from 0 to 32"))?;
    let addr: Ipv4Addr = addr
        .parse()
        .map_err(|_| anyhow!("{s:?} is not an IPv4 address or CIDR block like 192.0.2.0/24"))?;
    Ok((crate::addr::Cidr::new(addr, len).network(), len))
}

/// `PORT`, `PORT/tcp` or `PORT/udp`; protocol 0 means both.
pub fn parse_port(s: &str) -> Result<(u8, u16)> {
    let (port, proto) = match s.split_once('/') {
        Some((p, proto)) => (p, super::state::Port::proto_from_name(proto)?),
        None => (s, 0),
    };
    let port: u16 = port
        .parse()
        .ok()
        .filter(|p| *p != 0)
        .ok_or_else(|| anyhow!("{s:?} is not a port like 8080, 8080/tcp or 53/udp"))?;
    Ok((proto, port))
}

/// What a rule says, in words, for listings and errors.
pub fn describe(r: &FirewallRule) -> String {
    let mut words = vec![
        if r.allow { "allow" } else { "deny" }.to_string(),
        if r.out { "out" } else { "in" }.to_string(),
    ];
    if let Some((addr, len)) = r.cidr {
        words.push(format!(
            "{} {addr}/{len}",
            if r.out { "to" } else { "from" }
        ));
    }
    if let Some((proto, port)) = r.port {
        let proto = if proto == 0 {
            String::new()
        } else {
            format!("/{}", netbr_common::proto_name(proto))
        };
        words.push(format!("port {port}{proto}"));
    }
    if let Some(ep) = &r.endpoint {
        words.push(format!("endpoint {ep}"));
    }
    words.join(" ")
}

/// The datapath's view of a rule: its endpoint named by address.
fn spec(state: &State, r: &FirewallRule) -> Result<RuleSpec> {
    let endpoint = match &r.endpoint {
        Some(name) => Some(u32::from(
            state
                .endpoint(name)
                .ok_or_else(|| anyhow!("rule {} names endpoint {name}, which is gone", r.id))?
                .ip,
        )),
        None => None,
    };
    let (addr, len) = r.cidr.unwrap_or((Ipv4Addr::UNSPECIFIED, 0));
    Ok(RuleSpec {
        id: r.id,
        dir: if r.out { FW_OUT } else { FW_IN },
        action: if r.allow { FW_ALLOW } else { FW_DENY },
        cidr: (u32::from(addr), len),
        port: r.port,
        endpoint,
    })
}

/// Writes one rule's trie entries and scopes; on failure, what it wrote is
/// taken back.
fn install(dp: &mut Datapath, spec: &RuleSpec, slots: &[u32]) -> Result<()> {
    let mut written = Vec::new();
    for ((len, key), slot) in entries(spec).zip(slots) {
        let zero = vec![0u64; aya::util::nr_cpus().map_err(|(_, e)| e)?];
        dp.firewall_hits
            .set(*slot, aya::maps::PerCpuValues::try_from(zero)?, 0)
            .context("clearing a firewall hit counter")?;
        let trie_key = Key::new(len, key);
        let value = FwRule {
            id: spec.id,
            slot: *slot,
        };
        if let Err(e) = dp.firewall.insert(&trie_key, value, BPF_NOEXIST) {
            uninstall_keys(dp, &written);
            bail!("the datapath already holds a rule with this match ({e})");
        }
        written.push(trie_key);
    }
    for scope in scopes(spec) {
        let n = dp.firewall_scopes.get(&scope, 0).unwrap_or(0);
        dp.firewall_scopes
            .insert(scope, n + 1, 0)
            .context("writing a firewall scope")?;
    }
    Ok(())
}

fn uninstall_keys(dp: &mut Datapath, keys: &[Key<FwKey>]) {
    for k in keys {
        let _ = dp.firewall.remove(k);
    }
}

/// Removes one rule's trie entries and its share of the scopes.
fn uninstall(dp: &mut Datapath, spec: &RuleSpec) {
    let keys: Vec<_> = entries(spec).map(|(len, k)| Key::new(len, k)).collect();
    uninstall_keys(dp, &keys);
    for scope in scopes(spec) {
        match dp.firewall_scopes.get(&scope, 0) {
            Ok(n) if n > 1 => {
                let _ = dp.firewall_scopes.insert(scope, n - 1, 0);
            }
            _ => {
                let _ = dp.firewall_scopes.remove(&scope);
            }
        }
    }
}

fn set_entry_count(dp: &mut Datapath, state: &State) -> Result<()> {
    let mut cfg = dp.config()?;
    cfg.firewall_entries = state.firewall.iter().map(|r| r.slots.len() as u32).sum();
    dp.set_config(&cfg)
}

/// Makes the datapath hold exactly the state's rules (attach and
/// re-attach): rules survive both.
pub fn install_all(dp: &mut Datapath, state: &State) -> Result<()> {
    let rules = state
        .firewall
        .iter()
        .map(|r| Ok((spec(state, r)?, r.slots.clone())))
        .collect::<Result<Vec<_>>>()?;
    replace_rules(dp, &rules)
}

/// Makes the datapath hold exactly `rules`, each with its hit-counter
/// slots (one per entry of `netbr_common::firewall::entries`).
pub fn replace_rules(dp: &mut Datapath, rules: &[(RuleSpec, Vec<u32>)]) -> Result<()> {
    let stale: Vec<_> = dp.firewall.keys().filter_map(Result::ok).collect();
    for k in stale {
        let _ = dp.firewall.remove(&k);
    }
    let scopes: Vec<_> = dp.firewall_scopes.keys().filter_map(Result::ok).collect();
    for k in scopes {
        let _ = dp.firewall_scopes.remove(&k);
    }
    for (spec, slots) in rules {
        install(dp, spec, slots)
            .with_context(|| format!("installing firewall rule {}", spec.id))?;
    }
    let mut cfg = dp.config()?;
    cfg.firewall_entries = rules.iter().map(|(_, s)| s.len() as u32).sum();
    dp.set_config(&cfg)
}

impl Store {
    /// Adds a rule; returns its id. Validates everything first; a failure
    /// leaves rules and datapath as they were.
    pub fn add_rule(&mut self, req: &RuleRequest) -> Result<u32> {
        Ok(self.add_rules(std::slice::from_ref(req))?[0])
    }

    /// Adds rules at once (one state write, however many): all or none.
    pub fn add_rules(&mut self, reqs: &[RuleRequest]) -> Result<Vec<u32>> {
        if self.ipv6_only() && !reqs.is_empty() {
            anyhow::bail!(
                "bridge {} is IPv6-only, and firewall rules are IPv4 blocks so far: they would restrict nothing",
                self.bridge
            );
        }
        let mut dp = self.datapath()?;
        // Every datapath entry already held, by the rule holding it.
        let mut held: HashMap<(u32, FwKey), u32> = HashMap::new();
        for other in &self.state.firewall {
            for e in entries(&spec(&self.state, other)?) {
                held.insert(e, other.id);
            }
        }
        let used: HashSet<u32> = self
            .state
            .firewall
            .iter()
            .flat_map(|r| r.slots.iter().copied())
            .collect();
        let mut free = (0..FIREWALL_MAX_ENTRIES).filter(|s| !used.contains(s));
        let first_id = self.state.next_rule_id.max(1);
        let mut new = Vec::new();
        for (id, req) in (first_id..).zip(reqs) {
            let rule = self.validated(id, req)?;
            let spec = spec(&self.state, &rule)?;
            let mut slots = Vec::new();
            for e in entries(&spec) {
                if let Some(other) = held.insert(e, id) {
                    let what = self
                        .state
                        .firewall
                        .iter()
                        .find(|r| r.id == other)
                        .map(|r| format!(" ({})", describe(r)))
                        .unwrap_or_default();
                    bail!(
                        "rule {other}{what} already matches these flows: remove it first or narrow this rule"
                    );
                }
                slots.push(free.next().ok_or_else(|| {
                    anyhow!(
                        "bridge {} holds the most firewall entries it can ({FIREWALL_MAX_ENTRIES}): remove rules first",
                        self.bridge
                    )
                })?);
            }
            new.push((FirewallRule { slots, ..rule }, spec));
        }
        let mut installed: Vec<&RuleSpec> = Vec::new();
        for (rule, spec) in &new {
            if let Err(e) = install(&mut dp, spec, &rule.slots) {
                installed.into_iter().for_each(|s| uninstall(&mut dp, s));
                return Err(e);
            }
            installed.push(spec);
        }
        let before = self.state.clone();
        self.state
            .firewall
            .extend(new.iter().map(|(r, _)| r.clone()));
        self.state.next_rule_id = first_id + new.len() as u32;
        if let Err(e) = set_entry_count(&mut dp, &self.state).and_then(|_| self.commit()) {
            new.iter().for_each(|(_, s)| uninstall(&mut dp, s));
            self.state = before;
            let _ = set_entry_count(&mut dp, &self.state);
            return Err(e);
        }
        Ok(new.iter().map(|(r, _)| r.id).collect())
    }

    /// The rule `req` asks for, as rule `id`, or why it cannot be.
    fn validated(&self, id: u32, req: &RuleRequest) -> Result<FirewallRule> {
        let cidr = match (req.out, req.from, req.to) {
            (false, from, None) => from,
            (true, None, to) => to,
            (false, _, Some(_)) => bail!(
                "--to applies to --out rules (the destination of a container's flow); an --in rule matches clients with --from and published ports with --port"
            ),
            (true, Some(_), _) => bail!(
                "--from applies to --in rules; an --out rule names its containers with --endpoint"
            ),
        };
        if let Some(name) = &req.endpoint {
            self.endpoint(name)?;
        }
        Ok(FirewallRule {
            id,
            allow: req.allow,
            out: req.out,
            cidr,
            port: req.port,
            endpoint: req.endpoint.clone(),
            slots: Vec::new(),
        })
    }

    /// Removes rule `id`.
    pub fn remove_rule(&mut self, id: u32) -> Result<FirewallRule> {
        let mut dp = self.datapath()?;
        let at = self
            .state
            .firewall
            .iter()
            .position(|r| r.id == id)
            .ok_or_else(|| {
                anyhow!(
                    "bridge {} has no firewall rule {id}: see netbr firewall ls --bridge {}",
                    self.bridge,
                    self.bridge
                )
            })?;
        let rule = self.state.firewall.remove(at);
        uninstall(&mut dp, &spec(&self.state, &rule)?);
        set_entry_count(&mut dp, &self.state)?;
        self.commit()?;
        Ok(rule)
    }

    /// Removes every rule; returns how many there were.
    pub fn remove_all_rules(&mut self) -> Result<usize> {
        let mut dp = self.datapath()?;
        let rules = std::mem::take(&mut self.state.firewall);
        replace_rules(&mut dp, &[])?;
        self.commit()?;
        Ok(rules.len())
    }

    /// Removes the rules that name endpoint `name` (it is going away, and
    /// its address may be given to another).
    pub(super) fn remove_endpoint_rules(&mut self, dp: &mut Datapath, name: &str) -> Result<()> {
        let (gone, kept): (Vec<_>, Vec<_>) = std::mem::take(&mut self.state.firewall)
            .into_iter()
            .partition(|r| r.endpoint.as_deref() == Some(name));
        for rule in &gone {
            uninstall(dp, &spec(&self.state, rule)?);
        }
        self.state.firewall = kept;
        set_entry_count(dp, &self.state)
    }
}

/// Every rule with its hits (summed over its entries and CPUs).
pub fn rules_with_hits(dp: &Datapath, state: &State) -> Result<Vec<RuleHits>> {
    state
        .firewall
        .iter()
        .map(|rule| {
            let mut hits = 0;
            for slot in &rule.slots {
                let per_cpu = dp
                    .firewall_hits
                    .get(slot, 0)
                    .context("reading firewall hits")?;
                hits += per_cpu.iter().sum::<u64>();
            }
            Ok(RuleHits {
                rule: rule.clone(),
                hits,
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cidrs_take_bare_addresses_and_any_length() {
        assert_eq!(
            parse_cidr("192.0.2.7").unwrap(),
            ("192.0.2.7".parse().unwrap(), 32)
        );
        assert_eq!(
            parse_cidr("192.0.2.7/24").unwrap(),
            ("192.0.2.0".parse().unwrap(), 24)
        );
        assert_eq!(parse_cidr("0.0.0.0/0").unwrap().1, 0);
        for bad in ["192.0.2.0/33", "192.0.2/24", "x", "10.0.0.0/"] {
            assert!(parse_cidr(bad).is_err(), "{bad}");
        }
        let v6 = parse_cidr("2001:db8::/64").unwrap_err().to_string();
        assert!(v6.contains("is IPv6"), "{v6}");
    }

    #[test]
    fn ports_take_an_optional_protocol() {
        assert_eq!(parse_port("8080").unwrap(), (0, 8080));
        assert_eq!(parse_port("53/udp").unwrap(), (17, 53));
        for bad in ["0", "70000", "80/sctp", "http"] {
            assert!(parse_port(bad).is_err(), "{bad}");
        }
    }
}
